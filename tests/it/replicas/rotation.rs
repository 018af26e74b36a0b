//! The re-wrap job killed on the replica that holds it: three replicas,
//! enough tokens that the job takes several rounds, RotateKeys on a
//! replica that does not hold the job's lease; once the holder has
//! re-wrapped a first batch it gets `kill -9`. Another replica takes the
//! lease over (the dead session's advisory lock is gone) and finishes:
//! GetKeyStatus says nothing is pending, every data key is under the new
//! KEK, and every token resolves to its exact value on every survivor.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use aitokens::api::pb::{GetKeyStatusRequest, RotateKeysRequest};

use super::{Fleet, ms};
use crate::{
    common::{create_request, resolve},
    pgcluster::connect_url,
};

const REPLICAS: usize = 3;
const TOKENS: usize = 1000;

fn value_of(i: usize) -> String {
    format!(
        "sk-rewrap-{i:05}-{:08x}",
        (i as u32).wrapping_mul(2_654_435_761)
    )
}

/// Data keys by KEK version.
async fn versions(door: &tokio_postgres::Client) -> BTreeMap<i32, i64> {
    door.query(
        "SELECT kek_version, count(*) FROM tokens GROUP BY kek_version",
        &[],
    )
    .await
    .expect("versions")
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// The client port of the session that holds the re-wrap job's lease (an
/// advisory lock in this database), if one does.
async fn lease_port(door: &tokio_postgres::Client) -> Option<u16> {
    let rows = door
        .query(
            "SELECT a.client_port FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE l.locktype = 'advisory' AND l.granted
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[],
        )
        .await
        .expect("pg_locks");
    assert!(
        rows.len() <= 1,
        "{} sessions hold advisory locks",
        rows.len()
    );
    rows.first()
        .map(|r| u16::try_from(r.get::<_, i32>(0)).expect("a port"))
}

/// The socket inode of the TCP connection whose local port is `port`.
fn socket_inode(port: u16) -> Option<String> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|text| text.lines().skip(1).map(str::to_owned).collect::<Vec<_>>())
        .find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields.get(1)?.rsplit(':').next()?;
            if u16::from_str_radix(local_port, 16).ok()? != port {
                return None;
            }
            fields.get(9).map(|inode| inode.to_string())
        })
}

/// Which of `pids` has the socket `inode` open.
fn owner(pids: &[(usize, u32)], inode: &str) -> Option<usize> {
    let wanted = format!("socket:[{inode}]");
    pids.iter().find_map(|(index, pid)| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .ok()?
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.to_str() == Some(&wanted)))
            .then_some(*index)
    })
}

/// The replica whose session holds the lease, waiting up to 30 s for one.
async fn holder(fleet: &Fleet, door: &tokio_postgres::Client, alive: &[usize]) -> usize {
    let pids: Vec<(usize, u32)> = alive.iter().map(|&i| (i, fleet.replica(i).pid())).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(found) = lease_port(door)
            .await
            .and_then(socket_inode)
            .and_then(|inode| owner(&pids, &inode))
        {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "no replica of {alive:?} holds the re-wrap lease"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rewrap_job_survives_the_kill_of_its_replica() {
    let _heavy = crate::common::HEAVY.lock().await;
    let mut fleet = Fleet::scratch().await;
    fleet.start_n(REPLICAS, |_| {});
    let door = connect_url(&fleet.url).await;

    let seeding = Instant::now();
    let mut seeders = Vec::new();
    for w in 0..8 {
        let mut admin = fleet.admin(w % REPLICAS).await;
        seeders.push(tokio::spawn(async move {
            for i in (w..TOKENS).step_by(8) {
                admin
                    .create_token(create_request("acme", &format!("t{i:05}"), &value_of(i)))
                    .await
                    .expect("seed");
            }
        }));
    }
    for task in seeders {
        task.await.expect("seeder");
    }
    let seeded_in = seeding.elapsed();

    let all: Vec<usize> = (0..REPLICAS).collect();
    let first = holder(&fleet, &door, &all).await;
    let rotator = (first + 1) % REPLICAS;
    let status = fleet
        .keys(rotator)
        .await
        .rotate_keys(RotateKeysRequest {})
        .await
        .expect("rotate")
        .into_inner();
    let new = i32::try_from(status.current_version).expect("version");
    let old = new - 1;

    // The holder works; at its first committed batch it dies.
    let deadline = Instant::now() + Duration::from_secs(60);
    let at_kill = loop {
        let v = versions(&door).await;
        if v.get(&new).copied().unwrap_or(0) > 0 {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "the re-wrap job never started: {v:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    fleet.kill9(first);
    let killed = Instant::now();
    let after_kill = versions(&door).await;
    assert!(
        after_kill.get(&old).copied().unwrap_or(0) > 0,
        "the job was done before the kill: {after_kill:?}"
    );

    let survivors: Vec<usize> = all.iter().copied().filter(|&i| i != first).collect();
    let second = holder(&fleet, &door, &survivors).await;
    let took_over = killed.elapsed();
    let mut keys = fleet.keys(survivors[0]).await;
    let deadline = killed + Duration::from_secs(60);
    let finished = loop {
        let status = keys
            .get_key_status(GetKeyStatusRequest {})
            .await
            .expect("key status")
            .into_inner();
        if status.pending_rewrap == 0 {
            break killed.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "pending_rewrap still {} 60 s after the kill",
            status.pending_rewrap
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        versions(&door).await,
        BTreeMap::from([(new, TOKENS as i64)]),
        "every data key under the new KEK"
    );
    for &r in &survivors {
        let mut resolver = fleet.resolver(r).await;
        for i in 0..TOKENS {
            let name = format!("tenants/acme/tokens/t{i:05}");
            let got = resolve(&mut resolver, &name).await;
            assert!(
                got.as_ref().ok() == Some(&value_of(i)),
                "replica {r}: {name}: {got:?}"
            );
        }
    }
    println!(
        "re-wrap job killed: {TOKENS} tokens (seeded in {:.1}s); replica {first} held the lease, \
         RotateKeys on replica {rotator}; killed at its first committed batch (data keys by KEK \
         version {:?} when seen, {:?} right after the kill); replica {second} held the lease {:.0}ms after the kill and finished {:.0}ms after \
         it; every token resolves to its exact value on replicas {survivors:?}",
        seeded_in.as_secs_f64(),
        at_kill,
        after_kill,
        ms(took_over),
        ms(finished),
    );
    fleet.terminate_all();
}
