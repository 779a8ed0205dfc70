//! The console's HTML: one function per page, all through one layout.
//! Everything from the model is escaped; forms carry the session's CSRF token.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::Ctx;
use crate::model::{Binding, Database, Health, Host, Repo, Zone};
use crate::state::{clock, Directory};

pub const STYLE: &str = include_str!("style.css");
pub const SCRIPT: &str = include_str!("app.js");

/// Cards shown on one page at most (a filter narrows the rest).
const MAX_CARDS: usize = 500;

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a query value.
pub fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A page by path, or `None` for an unknown one. `error` is shown above the content.
pub fn page(dir: &Directory, ctx: &Ctx, path: &str, error: Option<&str>) -> Option<String> {
    let (title, active) = match path.trim_end_matches('/') {
        "/ui/services" => ("Services", "services"),
        "/ui/hosts" => ("Hosts", "hosts"),
        "/ui/repos" => ("Repositories", "repos"),
        "/ui/dbs" => ("Databases", "dbs"),
        "/ui/events" => ("Events", "events"),
        "/ui/login" => ("Sign in", "login"),
        _ => return None,
    };
    let mut flash = String::new();
    if let Some(e) = error {
        let _ = write!(
            flash,
            r#"<p class="flash error" role="alert">{}</p>"#,
            esc(e)
        );
    } else if let Some(ok) = done_message(dir, ctx) {
        let _ = write!(
            flash,
            r#"<p class="flash ok" role="status">{}</p>"#,
            esc(&ok)
        );
    }
    let heartbeats = dir.heartbeats_seen(&ctx.zone);
    let last_event = dir.last_event_id();
    let body = match active {
        "login" => Some((login(ctx), 0)),
        "events" => Some((
            events(dir, ctx),
            dir.read(&ctx.zone, |z| z.serial).unwrap_or(0),
        )),
        _ => dir.read(&ctx.zone, |z| {
            let content = match active {
                "services" => services(z, ctx),
                "hosts" => hosts(z, ctx, &heartbeats),
                "dbs" => dbs(z, ctx),
                _ => repos(z, ctx),
            };
            (content, z.serial)
        }),
    };
    let (content, serial) = body.unwrap_or_else(|| {
        (
            r#"<p class="empty">The directory has no zone yet: import one with <code>switchboard-directory zone import FILE</code>.</p>"#.to_string(),
            0,
        )
    });
    Some(layout(
        ctx,
        title,
        active,
        serial,
        last_event,
        &format!("{flash}{content}"),
    ))
}

/// The confirmation of a console change (`?done=ID&host=…&repo=…` or `&db=…`), only
/// for names the zone holds: a link cannot make the console say anything else.
fn done_message(dir: &Directory, ctx: &Ctx) -> Option<String> {
    let q = |k: &str| ctx.query.get(k).map(String::as_str).unwrap_or("");
    let (host, repo, db) = (q("host"), q("repo"), q("db"));
    let known = dir
        .read(&ctx.zone, |z| {
            (host.is_empty() || z.hosts.contains_key(host))
                && (repo.is_empty() || z.repos.contains_key(repo))
                && (db.is_empty() || z.dbs.contains_key(db))
        })
        .unwrap_or(false);
    if !known {
        return None;
    }
    match q("done") {
        "disable" => Some(format!("{host} marked unavailable")),
        "enable" => Some(format!("{host} marked available")),
        "promote" if !repo.is_empty() => Some(format!("{host} is now the master of {repo}")),
        "promote" if !db.is_empty() => Some(format!("{host} is now the master of database {db}")),
        "freeze" if !repo.is_empty() => Some(format!("{repo} is frozen: writes are refused")),
        "thaw" if !repo.is_empty() => Some(format!("{repo} takes writes again")),
        _ => None,
    }
}

/// A page for a refusal or an unknown route.
pub fn error_page(message: &str) -> String {
    format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>Switchboard</title><link rel="stylesheet" href="/ui/style.css"></head><body><header class="top"><a class="brand" href="/ui/services">Switchboard</a></header><main><p class="flash error" role="alert">{}</p><p><a href="/ui/services">Back to the console</a></p></main></body></html>"#,
        esc(message)
    )
}

fn layout(
    ctx: &Ctx,
    title: &str,
    active: &str,
    serial: u32,
    last_event: u64,
    content: &str,
) -> String {
    let zq = format!("?zone={}", url_encode(&ctx.zone));
    let mut nav = String::new();
    for (key, label) in [
        ("services", "Services"),
        ("hosts", "Hosts"),
        ("repos", "Repositories"),
        ("dbs", "Databases"),
        ("events", "Events"),
    ] {
        let current = if key == active {
            r#" aria-current="page""#
        } else {
            ""
        };
        let _ = write!(nav, r#"<a href="/ui/{key}{zq}"{current}>{label}</a>"#);
    }
    let zones = if ctx.zones.len() > 1 {
        let mut s = String::from(r#"<span class="zones">"#);
        for z in &ctx.zones {
            let cls = if *z == ctx.zone { " current" } else { "" };
            let _ = write!(
                s,
                r#"<a class="zone{cls}" href="/ui/{active}?zone={}">{}</a>"#,
                url_encode(z),
                esc(z)
            );
        }
        s.push_str("</span>");
        s
    } else {
        format!(r#"<span class="zone">{}</span>"#, esc(&ctx.zone))
    };
    let who = match &ctx.session {
        Some(s) => format!(
            r#"<span class="who">Signed in as <b>{}</b> until {}</span><form method="post" action="/ui/logout"><button class="link">Sign out</button></form>"#,
            esc(&s.admin),
            esc(&clock(s.expires_unix * 1000)[11..16])
        ),
        None => r#"<a class="signin" href="/ui/login">Sign in to make changes</a>"#.into(),
    };
    let feed = if active == "events" {
        "events"
    } else {
        "serial"
    };
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · Switchboard</title>
<link rel="stylesheet" href="/ui/style.css">
</head>
<body data-zone="{zone}" data-feed="{feed}">
<header class="top">
<a class="brand" href="/ui/services{zq}">Switchboard</a>
<nav>{nav}</nav>
<div class="session">{zones}{who}</div>
</header>
<main data-serial="{serial}" data-last-event="{last_event}">
<h1>{title}</h1>
{content}
<p class="meta">Zone {zone_text} · serial <span id="serial">{serial}</span> · <span id="live">updates live</span></p>
</main>
<script src="/ui/app.js"></script>
</body>
</html>
"#,
        zone = esc(&ctx.zone),
        zone_text = esc(&ctx.zone),
    )
}

fn badge(class: &str, text: &str) -> String {
    format!(r#"<span class="badge {class}">{}</span>"#, esc(text))
}

fn health_badge(h: Health) -> String {
    let class = match h {
        Health::Passing => "ok",
        Health::Warning => "warn",
        Health::Critical => "bad",
        Health::Unknown => "muted",
    };
    badge(class, h.as_str())
}

/// Why a binding is out of service answers, if it is.
fn out_of_service(z: &Zone, b: &Binding) -> Option<String> {
    let host = z.hosts.get(&b.host)?;
    if !host.available {
        Some(format!("host {} unavailable", b.host))
    } else if host.health == Health::Critical {
        Some(format!("host {} critical", b.host))
    } else if !b.available {
        Some("binding unavailable".into())
    } else if b.health == Health::Critical {
        Some("check failing".into())
    } else {
        None
    }
}

fn filter_form(ctx: &Ctx, what: &str) -> String {
    let q = ctx.query.get("q").map(String::as_str).unwrap_or("");
    format!(
        r#"<form class="filter" method="get"><input type="hidden" name="zone" value="{}"><input type="search" name="q" value="{}" placeholder="Filter {what}" aria-label="Filter {what}"><button>Filter</button></form>"#,
        esc(&ctx.zone),
        esc(q)
    )
}

fn matches(ctx: &Ctx, text: &str) -> bool {
    ctx.query
        .get("q")
        .filter(|q| !q.is_empty())
        .is_none_or(|q| text.contains(q.as_str()))
}

fn more(shown: usize, total: usize, what: &str) -> String {
    if shown < total {
        format!(r#"<p class="empty">Showing {shown} of {total} {what}; filter to narrow.</p>"#)
    } else {
        String::new()
    }
}

fn services(z: &Zone, ctx: &Ctx) -> String {
    let mut by_service: BTreeMap<&str, Vec<&Binding>> = BTreeMap::new();
    for b in z.bindings.values() {
        by_service.entry(&b.service).or_default().push(b);
    }
    let mut out = filter_form(ctx, "services");
    let up: usize = by_service
        .values()
        .filter(|bs| bs.iter().any(|b| out_of_service(z, b).is_none()))
        .count();
    let _ = write!(
        out,
        r#"<p class="summary">{} services · {up} answering · {} bindings</p><div class="cards">"#,
        by_service.len(),
        z.bindings.len()
    );
    let (mut shown, mut total) = (0, 0);
    for (svc, bindings) in &by_service {
        if !matches(ctx, svc) {
            continue;
        }
        total += 1;
        if shown == MAX_CARDS {
            continue;
        }
        shown += 1;
        let live = bindings
            .iter()
            .filter(|b| out_of_service(z, b).is_none())
            .count();
        let state = match live {
            0 => badge("bad", "no instance in service"),
            n if n == bindings.len() => badge("ok", &format!("{n} of {n} in service")),
            n => badge("warn", &format!("{n} of {} in service", bindings.len())),
        };
        let _ = write!(
            out,
            r#"<article class="card" id="service-{id}"><h2>{name} {state}</h2><p class="dns"><code>{name}.service.{zone}</code></p><ul class="rows">"#,
            id = esc(svc),
            name = esc(svc),
            zone = esc(&ctx.zone),
        );
        for b in bindings {
            let why = out_of_service(z, b)
                .map(|w| format!(r#" <span class="why">out: {}</span>"#, esc(&w)))
                .unwrap_or_default();
            let role = b
                .role
                .map(|r| format!(" · {}", r.as_str()))
                .unwrap_or_default();
            let check = b
                .check
                .as_ref()
                .map(|c| {
                    format!(
                        r#" <span class="check">check {} every {} s</span>"#,
                        esc(&c.probe_text()),
                        c.interval
                    )
                })
                .unwrap_or_default();
            let _ = write!(
                out,
                r#"<li><span class="name">{host}:{port}</span>{role} {health}{why}{check}</li>"#,
                host = esc(&b.host),
                port = b.port,
                role = esc(&role),
                health = health_badge(b.health),
            );
        }
        out.push_str("</ul></article>");
    }
    out.push_str("</div>");
    out.push_str(&more(shown, total, "services"));
    if by_service.is_empty() {
        out.push_str(r#"<p class="empty">No service is bound yet.</p>"#);
    }
    out
}

fn csrf_field(ctx: &Ctx) -> String {
    ctx.editor()
        .map(|s| {
            format!(
                r#"<input type="hidden" name="csrf" value="{}">"#,
                esc(&s.csrf)
            )
        })
        .unwrap_or_default()
}

fn host_card(
    z: &Zone,
    ctx: &Ctx,
    h: &Host,
    heartbeats: &std::collections::HashMap<String, std::time::Duration>,
) -> String {
    let state = if !h.available {
        badge("bad", "unavailable")
    } else if h.health == Health::Critical {
        badge("bad", "critical")
    } else {
        badge("ok", "in service")
    };
    let addrs: Vec<String> = h.addrs.iter().map(|a| a.to_string()).collect();
    let heartbeat = heartbeats
        .get(&h.name)
        .map(|age| format!("{} s ago", age.as_secs()))
        .unwrap_or_else(|| "none yet".into());
    let mut out = format!(
        r#"<article class="card" id="host-{id}" data-host="{id}" data-available="{available}"><h2>{name} {state}</h2><dl><dt>Addresses</dt><dd>{addrs}</dd><dt>Roles</dt><dd>{roles}</dd><dt>Health</dt><dd>{health}</dd><dt>Heartbeat</dt><dd>{heartbeat}</dd></dl>"#,
        id = esc(&h.name),
        name = esc(&h.name),
        available = h.available,
        addrs = esc(&addrs.join(", ")),
        roles = esc(&if h.roles.is_empty() {
            "none".to_string()
        } else {
            h.roles.join(", ")
        }),
        health = health_badge(h.health),
        heartbeat = esc(&heartbeat),
    );
    let bindings: Vec<&Binding> = z.bindings_of(&h.name).collect();
    if !bindings.is_empty() {
        out.push_str(r#"<ul class="rows">"#);
        for b in bindings {
            let _ = write!(
                out,
                r#"<li><span class="name">{}</span> :{} {}</li>"#,
                esc(&b.service),
                b.port,
                health_badge(b.health)
            );
        }
        out.push_str("</ul>");
    }
    let repos: Vec<String> = z
        .repos
        .values()
        .filter(|r| r.has_host(&h.name))
        .map(|r| {
            if r.master == h.name {
                format!("{} (master)", r.name)
            } else {
                r.name.clone()
            }
        })
        .collect();
    if !repos.is_empty() {
        let _ = write!(
            out,
            r#"<p class="repos">Repositories: {}</p>"#,
            esc(&repos.join(", "))
        );
    }
    if ctx.editor().is_some() {
        let (action, label, class) = if h.available {
            ("disable", "Mark unavailable", "danger")
        } else {
            ("enable", "Mark available", "primary")
        };
        let _ = write!(
            out,
            r#"<form method="post" action="/ui/hosts/{id}/{action}" class="actions">{csrf}<button class="{class}" name="do" value="{action}">{label}</button></form>"#,
            id = esc(&h.name),
            csrf = csrf_field(ctx),
        );
    }
    out.push_str("</article>");
    out
}

fn hosts(
    z: &Zone,
    ctx: &Ctx,
    heartbeats: &std::collections::HashMap<String, std::time::Duration>,
) -> String {
    let mut out = filter_form(ctx, "hosts");
    let up = z.hosts.values().filter(|h| h.in_service()).count();
    let _ = write!(
        out,
        r#"<p class="summary">{} hosts · {up} in service · {} unavailable</p><div class="cards">"#,
        z.hosts.len(),
        z.hosts.values().filter(|h| !h.available).count()
    );
    let (mut shown, mut total) = (0, 0);
    for h in z.hosts.values() {
        if !matches(ctx, &h.name) {
            continue;
        }
        total += 1;
        if shown < MAX_CARDS {
            shown += 1;
            out.push_str(&host_card(z, ctx, h, heartbeats));
        }
    }
    out.push_str("</div>");
    out.push_str(&more(shown, total, "hosts"));
    if z.hosts.is_empty() {
        out.push_str(r#"<p class="empty">No host yet.</p>"#);
    }
    out
}

fn repo_card(z: &Zone, ctx: &Ctx, r: &Repo) -> String {
    let master_v = r.master_version();
    let state = if let Some(m) = &r.frozen {
        badge("warn", &format!("frozen: {m}"))
    } else if z.hosts.get(&r.master).is_some_and(|h| h.in_service()) {
        badge("ok", "writable")
    } else {
        badge("bad", "read-only: master out of service")
    };
    let mut ro = if r.readonly {
        badge("muted", "read-only")
    } else {
        String::new()
    };
    if r.auto_failover {
        ro.push_str(&badge("muted", "auto-failover"));
    }
    let mut out = format!(
        r#"<article class="card" id="repo-{id}"><h2>{name} {state} {ro}</h2><p class="summary">Master <b>{master}</b> at version {master_v} · max lag {lag}</p><ul class="rows">"#,
        id = esc(&r.name),
        name = esc(&r.name),
        master = esc(&r.master),
        lag = r.max_lag,
    );
    for host in r.hosts() {
        let v = r.version_of(host);
        let in_service = z.hosts.get(host).is_some_and(|h| h.in_service());
        let role = if host == r.master {
            "master"
        } else {
            "replica"
        };
        let standing = if host == r.master {
            badge("ok", "master")
        } else if v > master_v {
            badge("warn", "ahead of the master (resyncing)")
        } else if r.is_current(host) {
            badge("ok", "current")
        } else {
            badge("warn", &format!("{} behind", master_v - v))
        };
        let service = if in_service {
            String::new()
        } else {
            badge("bad", "out of service")
        };
        let _ = write!(
            out,
            r#"<li data-host="{h}"><span class="name">{h}</span> {role} · version {v} {standing} {service}"#,
            h = esc(host),
        );
        if role == "replica" && ctx.editor().is_some() {
            let csrf = csrf_field(ctx);
            let action = format!("/ui/repos/{}/promote", esc(&r.name));
            if v < master_v {
                let _ = write!(
                    out,
                    r#"<details class="promote"><summary>Promote…</summary><form method="post" action="{action}">{csrf}<input type="hidden" name="host" value="{h}"><p class="warning">{h} is at version {v}; the master {m} is at {master_v}. Promoting it loses versions {from}..={master_v} unless {m} comes back first.</p><label><input type="checkbox" name="force" value="yes" required> Accept losing versions {from}..={master_v}</label><button class="danger">Force promotion</button></form></details>"#,
                    h = esc(host),
                    m = esc(&r.master),
                    from = v + 1,
                );
            } else {
                let _ = write!(
                    out,
                    r#"<form method="post" action="{action}" class="inline">{csrf}<input type="hidden" name="host" value="{h}"><button class="primary">Promote to master</button></form>"#,
                    h = esc(host),
                );
            }
        }
        out.push_str("</li>");
    }
    out.push_str("</ul>");
    if ctx.editor().is_some() {
        let csrf = csrf_field(ctx);
        let name = esc(&r.name);
        let _ = if r.frozen.is_some() {
            write!(
                out,
                r#"<form method="post" action="/ui/repos/{name}/thaw" class="inline freeze">{csrf}<button class="primary">Thaw: take writes again</button></form>"#
            )
        } else {
            write!(
                out,
                r#"<details class="freeze"><summary>Freeze writes…</summary><form method="post" action="/ui/repos/{name}/freeze">{csrf}<label>Message git shows to anyone who pushes <input name="message" maxlength="200" required placeholder="moving to new disks until 14:00 UTC"></label><button class="danger">Freeze {name}</button></form></details>"#
            )
        };
    }
    if !r.lost.is_empty() {
        out.push_str(r#"<p class="summary">Forced promotions:</p><ul class="rows">"#);
        for l in &r.lost {
            let _ = write!(
                out,
                "<li>{} → {} at {}: versions {}..={} may be lost</li>",
                esc(&l.old_master),
                esc(&l.new_master),
                esc(&clock(l.at.saturating_mul(1000))),
                l.from,
                l.to
            );
        }
        out.push_str("</ul>");
    }
    out.push_str("</article>");
    out
}

fn repos(z: &Zone, ctx: &Ctx) -> String {
    let mut out = filter_form(ctx, "repositories");
    let behind = z
        .repos
        .values()
        .filter(|r| r.replicas.iter().any(|h| !r.is_current(h)))
        .count();
    let _ = write!(
        out,
        r#"<p class="summary">{} repositories · {behind} with a replica behind</p><div class="cards">"#,
        z.repos.len()
    );
    let (mut shown, mut total) = (0, 0);
    for r in z.repos.values() {
        if !matches(ctx, &r.name) {
            continue;
        }
        total += 1;
        if shown < MAX_CARDS {
            shown += 1;
            out.push_str(&repo_card(z, ctx, r));
        }
    }
    out.push_str("</div>");
    out.push_str(&more(shown, total, "repositories"));
    if z.repos.is_empty() {
        out.push_str(r#"<p class="empty">No repository yet.</p>"#);
    }
    out
}

/// One database: its state, each host's reported position and lag, losses,
/// and a promote button per replica (a forced one, behind a confirmation,
/// for a replica behind the master's last reported position).
fn db_card(z: &Zone, ctx: &Ctx, d: &Database) -> String {
    let state = if let Some(m) = &d.frozen {
        badge("warn", &format!("frozen: {m}"))
    } else if crate::view::db_readonly(z, d) {
        badge("bad", "read-only: master out of service")
    } else {
        badge("ok", "writable")
    };
    let mut out = format!(
        r#"<article class="card" id="db-{id}"><h2>{name} {state}</h2><p class="summary">Master <b>{master}</b> · port {port} · max lag {lag} s</p><ul class="rows">"#,
        id = esc(&d.name),
        name = esc(&d.name),
        master = esc(&d.master),
        port = d.port,
        lag = d.max_lag_s,
    );
    let master_gtid = d.master_gtid();
    for host in d.hosts() {
        let in_service = z.hosts.get(host).is_some_and(|h| h.in_service());
        let p = d.positions.get(host);
        let gtid = p
            .map(|p| p.gtid.as_str())
            .filter(|g| !g.is_empty())
            .unwrap_or("-");
        let is_master = host == d.master;
        let standing = if is_master {
            badge("ok", "master")
        } else {
            match d.lag_of(host) {
                None => badge("ok", "serves reads"),
                Some(why) => badge("warn", &why),
            }
        };
        let behind = p
            .and_then(|p| p.seconds_behind)
            .map(|s| format!(" · {s} s behind"))
            .unwrap_or_default();
        let service = if in_service {
            String::new()
        } else {
            badge("bad", "out of service")
        };
        let _ = write!(
            out,
            r#"<li data-host="{h}"><span class="name">{h}</span> {role} · GTID <code>{g}</code>{behind} {standing} {service}"#,
            h = esc(host),
            role = if is_master { "master" } else { "replica" },
            g = esc(gtid),
        );
        if !is_master && ctx.editor().is_some() {
            let csrf = csrf_field(ctx);
            let action = format!("/ui/dbs/{}/promote", esc(&d.name));
            if d.behind_master(host) {
                let _ = write!(
                    out,
                    r#"<details class="promote"><summary>Promote…</summary><form method="post" action="{action}">{csrf}<input type="hidden" name="host" value="{h}"><p class="warning">{h} is at {g}; the master {m} last reported {mg}. Promoting it loses what only {m} has.</p><label><input type="checkbox" name="force" value="yes" required> Accept losing what {m} has past {g}</label><button class="danger">Force promotion</button></form></details>"#,
                    h = esc(host),
                    m = esc(&d.master),
                    g = esc(gtid),
                    mg = esc(master_gtid),
                );
            } else {
                let _ = write!(
                    out,
                    r#"<form method="post" action="{action}" class="inline">{csrf}<input type="hidden" name="host" value="{h}"><button class="primary">Promote to master</button></form>"#,
                    h = esc(host),
                );
            }
        }
        out.push_str("</li>");
    }
    out.push_str("</ul>");
    if !d.lost.is_empty() {
        out.push_str(r#"<p class="summary">Forced promotions:</p><ul class="rows">"#);
        for l in &d.lost {
            let _ = write!(
                out,
                "<li>{} → {} at {}: what {} had past {} (it was at {}) may be lost</li>",
                esc(&l.old_master),
                esc(&l.new_master),
                esc(&clock(l.at.saturating_mul(1000))),
                esc(&l.old_master),
                esc(&l.new_gtid),
                esc(&l.old_gtid),
            );
        }
        out.push_str("</ul>");
    }
    out.push_str("</article>");
    out
}

fn dbs(z: &Zone, ctx: &Ctx) -> String {
    let mut out = filter_form(ctx, "databases");
    let behind = z
        .dbs
        .values()
        .filter(|d| d.replicas.iter().any(|h| d.lag_of(h).is_some()))
        .count();
    let _ = write!(
        out,
        r#"<p class="summary">{} databases · {behind} with a replica out of reads</p><div class="cards">"#,
        z.dbs.len()
    );
    let (mut shown, mut total) = (0, 0);
    for d in z.dbs.values() {
        if !matches(ctx, &d.name) {
            continue;
        }
        total += 1;
        if shown < MAX_CARDS {
            shown += 1;
            out.push_str(&db_card(z, ctx, d));
        }
    }
    out.push_str("</div>");
    out.push_str(&more(shown, total, "databases"));
    if z.dbs.is_empty() {
        out.push_str(r#"<p class="empty">No database yet.</p>"#);
    }
    out
}

fn events(dir: &Directory, ctx: &Ctx) -> String {
    let last = dir.last_event_id();
    let found = dir
        .events_after(last.saturating_sub(200), 200)
        .unwrap_or_default();
    let mut out = String::from(r#"<ol class="events">"#);
    let mut n = 0;
    for e in found.iter().rev().filter(|e| e.zone == ctx.zone).take(100) {
        n += 1;
        let class = match (e.action.as_str(), e.to.as_deref()) {
            (_, Some("critical" | "unavailable" | "lagging" | "stale")) => "bad",
            ("remove" | "promote", _) => "warn",
            (_, Some("passing" | "available" | "current" | "fresh")) => "ok",
            _ => "muted",
        };
        let change = match (&e.from, &e.to) {
            (Some(f), Some(t)) => format!(" {} → {}", esc(f), esc(t)),
            _ => String::new(),
        };
        let _ = write!(
            out,
            r#"<li id="event-{id}"><time>{time}</time> <span class="badge {class}">{kind} {action}</span> <b>{name}</b>{change}<p>{message}</p><p class="by">#{id} by {by}</p></li>"#,
            id = e.id,
            time = esc(&clock(e.time)),
            kind = esc(&e.kind),
            action = esc(&e.action),
            name = esc(&e.name),
            message = esc(&e.message),
            by = esc(&e.by),
        );
    }
    out.push_str("</ol>");
    if n == 0 {
        out.push_str(r#"<p class="empty">No event yet.</p>"#);
    }
    out
}

fn login(ctx: &Ctx) -> String {
    let state = match &ctx.session {
        Some(s) => format!(
            r#"<p class="flash ok">You are signed in as <b>{}</b> for {}.</p>"#,
            esc(&s.admin),
            esc(&s.zone)
        ),
        None => String::new(),
    };
    format!(
        r#"{state}<div class="card narrow"><p>Changes from the console are signed for by your admin key, which never leaves your machine. On a machine that has it, run:</p><pre>switchboard-directory --key ADMIN.pem console</pre><p>and open the link it prints (it works once, within 5 minutes). Or paste the code here:</p><form method="post" action="/ui/login" id="login"><label for="code">Login code</label><input id="code" name="code" autocomplete="off" required><button class="primary">Sign in</button></form></div>"#
    )
}
