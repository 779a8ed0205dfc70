//! `gen-zone ORIGIN HOSTS SERVICES OUTDIR ADMIN-PUBKEY`: writes `OUTDIR/ORIGIN.zone` in
//! Switchboard's canonical form (HOSTS hosts with A and TXT, SERVICES services
//! with three bindings each: a master and two replicas) and `OUTDIR/queries.txt`,
//! a dnsperf query file mixing 40% A, 30% SRV, 20% TXT and 10% NXDOMAIN.

use std::io::Write;

use rand::{Rng, SeedableRng};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 6 {
        eprintln!("usage: gen-zone ORIGIN HOSTS SERVICES OUTDIR ADMIN-PUBKEY");
        std::process::exit(2);
    }
    let origin = args[1].trim_end_matches('.').to_string();
    let (Ok(hosts), Ok(services)) = (args[2].parse::<usize>(), args[3].parse::<usize>()) else {
        eprintln!("gen-zone: HOSTS and SERVICES are numbers");
        std::process::exit(2);
    };
    let dir = std::path::Path::new(&args[4]);
    if let Err(e) = write(&origin, hosts.max(3), services, dir, &args[5]) {
        eprintln!("gen-zone: {e}");
        std::process::exit(1);
    }
}

fn write(
    origin: &str,
    hosts: usize,
    services: usize,
    dir: &std::path::Path,
    admin: &str,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut z = std::io::BufWriter::new(std::fs::File::create(dir.join(format!("{origin}.zone")))?);
    writeln!(z, "$ORIGIN {origin}.\n$TTL 3600")?;
    writeln!(
        z,
        "@ IN SOA ns1 hostmaster ( 1 3600 600 604800 30 )\n@ IN NS ns1\nns1 IN A 127.0.0.1"
    )?;
    writeln!(z, "bench._admin 60 IN TXT \"key=ed25519:{admin}\"")?;
    for h in 0..hosts {
        writeln!(
            z,
            "h{h}.node 60 IN A 10.{}.{}.{}",
            (h >> 16) & 255,
            (h >> 8) & 255,
            h & 255
        )?;
        writeln!(
            z,
            "h{h}.node 60 IN TXT \"roles=web\" \"available=1\" \"rack=r{}\"",
            h % 40
        )?;
    }
    for s in 0..services {
        for k in 0..3 {
            let h = (s * 3 + k) % hosts;
            let (prio, role) = if k == 0 {
                (0, "master")
            } else {
                (10, "replica")
            };
            writeln!(
                z,
                "h{h}._s{s}._tcp 5 IN SRV {prio} 0 {} h{h}.node",
                8000 + k
            )?;
            writeln!(
                z,
                "h{h}._s{s}._tcp 5 IN TXT \"role={role}\" \"readonly={}\" \"available=1\"",
                u8::from(k > 0)
            )?;
        }
    }
    z.flush()?;
    let mut q = std::io::BufWriter::new(std::fs::File::create(dir.join("queries.txt"))?);
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    for _ in 0..200_000 {
        let roll = rng.gen_range(0..100);
        let h = rng.gen_range(0..hosts);
        match roll {
            0..=39 => writeln!(q, "h{h}.node.{origin}. A")?,
            40..=69 => writeln!(
                q,
                "s{}.service.{origin}. SRV",
                rng.gen_range(0..services.max(1))
            )?,
            70..=89 => writeln!(q, "h{h}.node.{origin}. TXT")?,
            _ => writeln!(q, "nx{}.node.{origin}. A", rng.gen::<u32>())?,
        }
    }
    q.flush()
}
