//! The PostgreSQL harness itself: a cluster of its own on a free port, durable as the hub
//! requires, that takes SQL and is gone when dropped.

use doorstep_testkit::postgres::Postgres;

#[test]
fn a_cluster_of_its_own_durable_and_gone_when_dropped() {
    let pg = Postgres::start();
    assert_ne!(pg.port(), 5432, "never the machine's own instance");
    assert_eq!(pg.psql("SHOW fsync"), "on");
    assert_eq!(pg.psql("SHOW synchronous_commit"), "on");
    pg.psql("CREATE TABLE acks (device text PRIMARY KEY, up_to_seq bigint NOT NULL)");
    pg.psql("INSERT INTO acks VALUES ('van-1', 5) ON CONFLICT (device) DO UPDATE SET up_to_seq = GREATEST(acks.up_to_seq, excluded.up_to_seq)");
    pg.psql("INSERT INTO acks VALUES ('van-1', 3) ON CONFLICT (device) DO UPDATE SET up_to_seq = GREATEST(acks.up_to_seq, excluded.up_to_seq)");
    assert_eq!(pg.psql("SELECT up_to_seq FROM acks WHERE device = 'van-1'"), "5", "an ack never moves back");
    assert!(pg.url("postgres").starts_with("postgres://postgres@127.0.0.1:"));
    let data = pg.data_dir();
    assert!(data.join("PG_VERSION").exists());
    drop(pg);
    assert!(!data.exists(), "the cluster is deleted with the harness");
}
