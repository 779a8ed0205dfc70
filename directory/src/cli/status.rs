//! `status`: the directory's zones, serials and counts.

use super::{field, table, CliError, Client};

pub async fn run(c: &Client) -> Result<(), CliError> {
    let v = c.get("/v1/status").await?;
    c.show(&v, |v| {
        let rows: Vec<Vec<String>> = v
            .get("zones")
            .and_then(|z| z.as_array())
            .map(|a| {
                a.iter()
                    .map(|z| {
                        vec![
                            field(z, "zone"),
                            field(z, "serial"),
                            format!("{}/{}", field(z, "available_hosts"), field(z, "hosts")),
                            field(z, "services"),
                            field(z, "bindings"),
                            field(z, "repos"),
                            field(z, "admins"),
                        ]
                    })
                    .collect()
            })
            .unwrap_or_default();
        println!("switchboard-directory {}", field(v, "version"));
        println!(
            "{}",
            table(
                &["ZONE", "SERIAL", "HOSTS UP", "SERVICES", "BINDINGS", "REPOS", "ADMINS"],
                &rows
            )
        );
        let bad = v
            .get("unreadable")
            .and_then(|u| u.as_array())
            .map(Vec::as_slice)
            .unwrap_or_default();
        if !bad.is_empty() {
            println!(
                "\n{} stored record(s) could not be read at start and are left out:",
                bad.len()
            );
            let rows: Vec<Vec<String>> = bad
                .iter()
                .map(|u| vec![field(u, "key"), field(u, "reason")])
                .collect();
            println!("{}", table(&["RECORD", "REASON"], &rows));
        }
    });
    Ok(())
}
