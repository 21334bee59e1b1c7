//! The relay simulator's frames, fault-injected ones included, decode with our decoder and normalize to exactly
//! the simulator's ground truth — computed by the generator independently of the encoding. (The simulator is
//! also checked against an independent implementation, the Python `atproto` SDK: crates/sim/tests.)

use fpaas_event::{Event, Kind, normalize};
use fpaas_proto::frame::{Frame, decode_frame};
use fpaas_sim::{FaultConfig, Generator, OpAction, TruthEvent};
use std::collections::BTreeMap;

fn truth_key(t: &TruthEvent) -> Option<String> {
    Some(match t {
        TruthEvent::Op {
            seq,
            did,
            rev,
            action,
            collection,
            rkey,
            cid,
            oversize,
        } => {
            if *oversize {
                return None;
            }
            let op = match action {
                OpAction::Create => "create",
                OpAction::Update => "update",
                OpAction::Delete => "delete",
            };
            format!("{seq} commit {did} {rev} {op} {collection}/{rkey} {cid:?}")
        }
        TruthEvent::Identity { seq, did, handle } => format!("{seq} identity {did} {handle:?}"),
        TruthEvent::Account {
            seq,
            did,
            active,
            status,
        } => format!("{seq} account {did} {active} {status:?}"),
        TruthEvent::Sync { seq, did, rev } => format!("{seq} sync {did} {rev}"),
    })
}

fn event_key(e: &Event) -> String {
    match e.kind {
        Kind::Commit => {
            let c = e.commit.as_ref().expect("commit body");
            format!(
                "{} commit {} {} {} {}/{} {:?}",
                e.seq,
                e.did,
                c.rev,
                c.operation.as_str(),
                c.collection,
                c.rkey,
                c.cid
            )
        }
        Kind::Identity => {
            let i = e.identity.as_ref().expect("identity body");
            format!("{} identity {} {:?}", e.seq, e.did, i.handle)
        }
        Kind::Account => {
            let a = e.account.as_ref().expect("account body");
            format!("{} account {} {} {:?}", e.seq, e.did, a.active, a.status)
        }
        Kind::Sync => format!(
            "{} sync {} {}",
            e.seq,
            e.did,
            e.sync.as_ref().expect("sync body").rev
        ),
    }
}

#[test]
fn simulated_frames_normalize_to_ground_truth_and_faults_are_typed() {
    let faults = FaultConfig {
        malformed_every: Some(97),
        truncated_every: Some(89),
        unknown_type_every: Some(83),
        oversize_every: Some(251),
        hostile_every: None,
    };
    let mut generator = Generator::new(7, 500, 1, faults).with_rare_boost(50);
    let mut expected = Vec::new();
    let mut got = Vec::new();
    let mut errors: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut unknown = 0u64;
    let mut dropped: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut oversize_truth = 0u64;
    for _ in 0..5_000 {
        let generated = generator.next_event().expect("generate");
        for t in &generated.truth {
            match truth_key(t) {
                Some(k) => expected.push(k),
                None => oversize_truth += 1,
            }
        }
        for bytes in &generated.frames {
            match decode_frame(bytes) {
                Ok(Frame::Unknown(_)) => unknown += 1,
                Ok(frame) => {
                    let n = normalize(&frame);
                    for d in &n.dropped {
                        *dropped.entry(d.reason.0).or_default() += 1;
                    }
                    got.extend(n.events.iter().map(event_key));
                }
                Err(e) => *errors.entry(e.kind().as_str()).or_default() += 1,
            }
        }
    }
    assert_eq!(got.len(), expected.len());
    assert_eq!(
        got, expected,
        "normalized events differ from the simulator's truth"
    );
    // Every injected fault surfaced as a typed error or an ignored unknown frame, and nothing else failed.
    let error_total: u64 = errors.values().sum();
    assert_eq!(error_total, 5_000 / 97 + 5_000 / 89, "errors: {errors:?}");
    assert_eq!(unknown, 5_000 / 83);
    assert!(oversize_truth > 0);
    assert_eq!(
        dropped.get("record_too_large").copied(),
        Some(oversize_truth),
        "{dropped:?}"
    );
    assert_eq!(dropped.len(), 1, "unexpected drops: {dropped:?}");
    // The mix covers every kind and operation.
    for needle in [
        " create ",
        " update ",
        " delete ",
        " identity ",
        " account ",
        " sync ",
    ] {
        assert!(
            got.iter().any(|k| k.contains(needle)),
            "no {needle:?} events"
        );
    }
}
