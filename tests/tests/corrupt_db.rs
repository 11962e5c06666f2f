//! A corrupt outbox database is moved aside (never deleted), an alarm is raised, a fresh
//! one takes over, and numbering resumes above every seq the hub may have seen: the hub
//! ends with every confirmation exactly once, in order, with no seq reused.

use std::time::Duration;

use doorstep_agent::status::{link_record_path, read_status};
use doorstep_e2e::{AckedVan, TestAgent, confirmation};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_database_is_moved_aside_and_numbering_continues_without_reuse() {
    let setup = AckedVan::start("van-corrupt", 5).await.expect("broker and receiver");
    let (db, van, receiver) = (setup.db(), &setup.van, &setup.receiver);
    let options = setup.agent_options();

    let agent = TestAgent::start(&options).await.expect("agent");
    for n in 1..=50 {
        agent.append(confirmation(n)).await.expect("append");
    }
    assert!(receiver.wait_for(Duration::from_secs(30), |r| r.contiguous(van) >= 50).await);
    tokio::time::sleep(Duration::from_millis(300)).await; // let the ack land
    agent.stop().await.expect("stop");
    tokio::time::sleep(Duration::from_millis(100)).await; // the outbox thread closes the file

    // Garbage over the header and the first pages, as a failing eMMC or a torn write would leave.
    let mut bytes = std::fs::read(&db).expect("read db");
    let end = bytes.len().min(8192);
    bytes[..end].iter_mut().enumerate().for_each(|(i, b)| *b = u8::try_from(i * 7 % 256).expect("byte"));
    std::fs::write(&db, bytes).expect("corrupt db");

    let agent = TestAgent::start(&options).await.expect("agent starts on a fresh file");
    for n in 51..=100 {
        let appended = agent.append(confirmation(n)).await.expect("append");
        assert_eq!(appended.seq, u64::from(n), "numbering resumes where the hub left off");
    }
    let all = receiver.wait_for(Duration::from_secs(30), |r| r.contiguous(van) >= 100).await;
    agent.stop().await.expect("stop");
    assert!(all, "receiver holds {} of 100", receiver.received().contiguous(van));
    receiver.received().assert_every_confirmation_once_in_order(van, 100);

    let aside: Vec<String> = std::fs::read_dir(setup.dir.path())
        .expect("ls")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|name| name.starts_with("agent.db.corrupt-"))
        .collect();
    assert!(!aside.is_empty(), "the corrupt file is kept as evidence");
    let status = read_status(&db, &link_record_path(&db)).expect("status");
    assert_eq!(status.outbox.corrupt_files, 1);
    assert!(status.render().contains("CORRUPT DATABASE"), "{}", status.render());
}
