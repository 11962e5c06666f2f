//! Temporary diagnostics (to be removed).
#![allow(missing_docs, clippy::print_stdout, clippy::unwrap_used)]
use doorstep_agent::nmea::*;
fn main() {
    let dir = std::env::args().nth(1).unwrap();
    let mut entries: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|x| x == "log")).collect();
    entries.sort();
    for p in entries {
        let bytes = std::fs::read(&p).unwrap();
        let mut framer = Framer::new();
        let mut handle = |f: Frame<'_>| {
            if let Frame::Sentence(s) = f {
                let d = decode_sentence(s, ChecksumPolicy::AllowMissing);
                match d.decoded {
                    Decoded::Skipped(k) if k.is_damage() || d.unchecked => println!("{}\t{}\t{}", p.file_name().unwrap().to_string_lossy(), if d.unchecked {format!("{k}+unchecked")} else {k.to_string()}, String::from_utf8_lossy(s)),
                    Decoded::Observation(_) if d.unchecked => println!("{}\tused+unchecked\t{}", p.file_name().unwrap().to_string_lossy(), String::from_utf8_lossy(s)),
                    _ => {}
                }
            } else if let Frame::Skipped(k) = f { if k.is_damage() { println!("{}\t{}\t-", p.file_name().unwrap().to_string_lossy(), k); } }
        };
        framer.feed(&bytes, &mut handle);
        framer.finish(&mut handle);
    }
}
