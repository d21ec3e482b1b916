//! The framing of docs/protocol.md, as a specification: what round-trips, and how each
//! malformed frame is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fmt::Debug;

use domain_proto::discovery::{Capability, JoinClusterRequest, JoinClusterResponse, Node};
use domain_proto::domain_data::{Data, Metadata, Query, ResumeOffer, ResumeStart, UpsertMetadata};
use domain_proto::task::{
    self, CapabilityFilters, Code, ConsumeDataInputV1, DomainClusterHandshakeRequest,
    DomainClusterHandshakeResponse, GlobalRefinementInputV1, Job, JobRequest,
    LocalRefinementInputV1, LocalRefinementOutputV1, ResourceRecruitment, Status,
    StoreDataOutputV1, SubmitJobResponse, Task, TaskHandler, TaskRequest, UnsubscribeDataQueryV1,
};
use domain_proto::{
    DEFAULT_MAX_FRAME, FrameError, encode_frame, read_message, read_message_or_eof, write_message,
};
use proptest::prelude::*;
use prost::Message;
use tokio::io::AsyncWriteExt;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

/// Writes `message` into a pipe and reads it back from the other end.
async fn round_trip<M: Message + Default + PartialEq + Debug + Clone>(message: M) {
    let (mut writer, mut reader) = tokio::io::duplex(64 * 1024);
    let expected = message.clone();
    let write = async move {
        write_message(&mut writer, &message).await.unwrap();
        writer.shutdown().await.unwrap();
    };
    let read = async {
        let got: M = read_message(&mut reader, DEFAULT_MAX_FRAME).await.unwrap();
        // Nothing follows the frame: the next read sees a clean end of stream.
        let next: Option<M> = read_message_or_eof(&mut reader, DEFAULT_MAX_FRAME)
            .await
            .unwrap();
        (got, next)
    };
    let ((), (got, next)) = tokio::join!(write, read);
    assert_eq!(got, expected);
    assert_eq!(next, None);
}

fn properties() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("k".to_owned(), "v".to_owned()),
        ("unicode ✓".to_owned(), String::new()),
    ])
}

fn metadata() -> Metadata {
    Metadata {
        name: "scan.ply".into(),
        data_type: "mesh".into(),
        size: u32::MAX,
        id: "id-1".into(),
        hash: Some("ab".repeat(32)),
        properties: properties(),
        content_offset: Some(7168),
    }
}

fn query() -> Query {
    Query {
        ids: vec!["a".into(), "b".into()],
        name_regexp: Some("^scan".into()),
        data_type_regexp: None,
        names: vec!["n".into()],
        data_types: vec!["t".into()],
        metadata_only: true,
        properties: properties(),
    }
}

fn a_task() -> Task {
    Task {
        name: "store".into(),
        receiver: Some("12D3KooW-receiver".into()),
        endpoint: "/store/v1".into(),
        access_token: Some("header.payload.signature".into()),
        job_id: "job".into(),
        sender: "12D3KooW-sender".into(),
        status: Status::Processing as i32,
        output: Some(task::Any {
            type_url: "StoreDataOutputV1".into(),
            value: vec![1, 2, 3],
        }),
    }
}

#[test]
fn every_message_type_round_trips_through_a_frame() {
    runtime().block_on(async {
        round_trip(Capability {
            endpoint: "/store/v1".into(),
            capacity: -1,
        })
        .await;
        let node = Node {
            id: "peer".into(),
            capabilities: vec![Capability {
                endpoint: "/load/v1".into(),
                capacity: 4,
            }],
            name: "node-1".into(),
            cpu: Some(8),
            gpu: None,
        };
        round_trip(node.clone()).await;
        round_trip(JoinClusterRequest {
            node,
            holdings: None,
            invite: Some("dcinv-00ff".into()),
            started: Some(true),
        })
        .await;
        round_trip(JoinClusterResponse::default()).await;

        round_trip(metadata()).await;
        round_trip(query()).await;
        round_trip(Data {
            domain_id: "d".into(),
            metadata: metadata(),
            content: vec![7; 1000],
        })
        .await;
        round_trip(UpsertMetadata {
            name: "../etc/passwd".into(),
            data_type: "t".into(),
            size: 7168,
            is_new: true,
            id: String::new(),
            properties: properties(),
            replica: Some(true),
            resume_key: Some("upload-1".into()),
        })
        .await;
        round_trip(ResumeOffer {
            offset: 7168,
            prefix_hash: Some("ab".repeat(32)),
        })
        .await;
        round_trip(ResumeStart { offset: 0 }).await;

        round_trip(task::Any {
            type_url: "Error".into(),
            value: vec![0; 3],
        })
        .await;
        let task_request = TaskRequest {
            name: "t1".into(),
            capability_filters: CapabilityFilters {
                endpoint: "/store/v1".into(),
                min_gpu: Some(1),
                min_cpu: None,
            },
            max_budget: Some(u64::MAX),
            timeout: "30s".into(),
            needs: vec!["t0".into()],
            resource_recruitment: ResourceRecruitment {
                recruitment_policy: task::resource_recruitment::RecruitmentPolicy::Fail as i32,
                termination_policy: task::resource_recruitment::TerminationPolicy::Terminate as i32,
            },
            sender: "s".into(),
            receiver: None,
            data: None,
        };
        round_trip(task_request.clone()).await;
        round_trip(JobRequest {
            name: "job".into(),
            tasks: vec![task_request],
            nonce: "n".into(),
            domain_id: "d".into(),
        })
        .await;
        round_trip(Job {
            id: "j".into(),
            name: "job".into(),
            tasks: vec![a_task()],
        })
        .await;
        round_trip(SubmitJobResponse {
            code: Code::BadRequest as i32,
            job_id: String::new(),
            err_msg: "cycle".into(),
        })
        .await;
        round_trip(ConsumeDataInputV1 {
            query: query(),
            keep_alive: true,
            ..Default::default()
        })
        .await;
        round_trip(UnsubscribeDataQueryV1 {}).await;
        round_trip(StoreDataOutputV1 {
            ids: vec!["x".into()],
        })
        .await;
        round_trip(LocalRefinementInputV1 { query: query() }).await;
        round_trip(LocalRefinementOutputV1 {
            result_ids: vec!["r".into()],
        })
        .await;
        round_trip(GlobalRefinementInputV1 {
            local_refinement_results: vec![LocalRefinementOutputV1 { result_ids: vec![] }],
        })
        .await;
        round_trip(a_task()).await;
        round_trip(DomainClusterHandshakeRequest {
            access_token: "tok".into(),
            domain_id: "d".into(),
        })
        .await;
        round_trip(DomainClusterHandshakeResponse {
            code: Code::Ok as i32,
            err_msg: String::new(),
            extensions: vec!["resume".into()],
        })
        .await;
        round_trip(task::Error {
            message: "boom".into(),
        })
        .await;
        round_trip(TaskHandler {
            task: a_task(),
            dependencies: BTreeMap::from([("t0".to_owned(), true)]),
            job_id: "j".into(),
            err_msg: String::new(),
            retries: 3,
            updated_at: 2,
            created_at: 1,
        })
        .await;
    });
}

#[test]
fn enums_keep_the_posemesh_numbers() {
    assert_eq!(Code::Ok as i32, 200);
    assert_eq!(Code::Created as i32, 201);
    assert_eq!(Code::Accepted as i32, 202);
    assert_eq!(Code::BadRequest as i32, 400);
    assert_eq!(Status::Pending as i32, 0);
    assert_eq!(Status::Processing as i32, 6);
    assert_eq!(
        task::resource_recruitment::RecruitmentPolicy::Fail as i32,
        3
    );
    // Code has no zero value: an absent code reads as its first value, OK.
    assert_eq!(SubmitJobResponse::default().code(), Code::Ok);
}

#[test]
fn a_frame_is_a_big_endian_length_then_a_varint_delimited_message() {
    let message = task::Error {
        message: "x".into(),
    };
    let frame = encode_frame(&message).unwrap();
    let body = message.encode_to_vec();
    assert_eq!(&frame[..4], &((1 + body.len()) as u32).to_be_bytes());
    assert_eq!(frame[4] as usize, body.len());
    assert_eq!(&frame[5..], &body[..]);
}

async fn read_error(bytes: Vec<u8>, limit: usize) -> FrameError {
    let mut reader = bytes.as_slice();
    read_message::<task::Error, _>(&mut reader, limit)
        .await
        .unwrap_err()
}

/// A frame whose 4-byte length says `n` and whose content is `content`.
fn raw_frame(n: u32, content: &[u8]) -> Vec<u8> {
    let mut bytes = n.to_be_bytes().to_vec();
    bytes.extend_from_slice(content);
    bytes
}

#[test]
fn a_frame_over_the_limit_is_refused_before_its_body_is_read() {
    runtime().block_on(async {
        let frame = encode_frame(&task::Error {
            message: "0123456789".into(),
        })
        .unwrap();
        let len = frame.len() as u64 - 4;
        let err = read_error(frame, 8).await;
        assert!(
            matches!(err, FrameError::TooLarge { len: l, limit: 8 } if l == len),
            "got {err:?}"
        );
    });
}

#[test]
fn a_frame_claiming_4_gib_fails_at_once_without_waiting_or_allocating() {
    runtime().block_on(async {
        // The peer announces u32::MAX bytes and then stalls forever: the reader must not
        // wait for the body nor reserve memory for it.
        let (mut peer, mut reader) = tokio::io::duplex(16);
        peer.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let err = read_message::<task::Error, _>(&mut reader, DEFAULT_MAX_FRAME)
            .await
            .unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { len, .. } if len == u64::from(u32::MAX)));
        drop(peer);
    });
}

#[test]
fn a_stream_that_ends_inside_the_prefix_is_truncated() {
    runtime().block_on(async {
        let err = read_error(vec![0, 0], DEFAULT_MAX_FRAME).await;
        assert!(
            matches!(
                err,
                FrameError::Truncated {
                    expected: 4,
                    got: 2
                }
            ),
            "got {err:?}"
        );
    });
}

#[test]
fn a_stream_that_ends_inside_the_body_is_truncated() {
    runtime().block_on(async {
        let mut frame = encode_frame(&task::Error { message: "hello".into() }).unwrap();
        let expected = frame.len() as u64 - 4;
        frame.truncate(frame.len() - 2);
        let err = read_error(frame, DEFAULT_MAX_FRAME).await;
        assert!(
            matches!(err, FrameError::Truncated { expected: e, got } if e == expected && got == e - 2),
            "got {err:?}"
        );
    });
}

#[test]
fn an_empty_stream_is_a_clean_end_for_read_message_or_eof_and_truncation_for_read_message() {
    runtime().block_on(async {
        let mut empty: &[u8] = &[];
        let none = read_message_or_eof::<task::Error, _>(&mut empty, DEFAULT_MAX_FRAME).await;
        assert!(matches!(none, Ok(None)));
        let err = read_error(Vec::new(), DEFAULT_MAX_FRAME).await;
        assert!(
            matches!(
                err,
                FrameError::Truncated {
                    expected: 4,
                    got: 0
                }
            ),
            "got {err:?}"
        );
    });
}

#[test]
fn a_varint_length_that_disagrees_with_the_prefix_is_refused() {
    runtime().block_on(async {
        // The prefix says 3 bytes; the varint inside claims a 5-byte body.
        let err = read_error(raw_frame(3, &[5, 0x0a, 0x00]), DEFAULT_MAX_FRAME).await;
        assert!(
            matches!(
                err,
                FrameError::LengthMismatch {
                    frame_len: 3,
                    varint: 5,
                    varint_len: 1
                }
            ),
            "got {err:?}"
        );
        // A bare protobuf body (posemesh's own length-delimited form is required).
        let body = task::Error {
            message: "abc".into(),
        }
        .encode_to_vec();
        let err = read_error(raw_frame(body.len() as u32, &body), DEFAULT_MAX_FRAME).await;
        assert!(
            matches!(err, FrameError::LengthMismatch { .. }),
            "got {err:?}"
        );
    });
}

#[test]
fn an_empty_frame_or_an_unterminated_varint_is_a_bad_varint() {
    runtime().block_on(async {
        let err = read_error(raw_frame(0, &[]), DEFAULT_MAX_FRAME).await;
        assert!(
            matches!(err, FrameError::BadVarint { frame_len: 0 }),
            "got {err:?}"
        );
        let err = read_error(raw_frame(2, &[0xff, 0xff]), DEFAULT_MAX_FRAME).await;
        assert!(
            matches!(err, FrameError::BadVarint { frame_len: 2 }),
            "got {err:?}"
        );
    });
}

#[test]
fn an_undecodable_body_is_a_decode_error_naming_the_message() {
    runtime().block_on(async {
        // Field 1 as a length-delimited string claiming 100 bytes, with none present.
        let err = read_error(raw_frame(3, &[2, 0x0a, 100]), DEFAULT_MAX_FRAME).await;
        match err {
            FrameError::Decode { message, .. } => assert!(message.ends_with("task::Error")),
            other => panic!("expected a decode error, got {other:?}"),
        }
    });
}

#[test]
fn frames_are_read_one_at_a_time_leaving_raw_bytes_after_them_unread() {
    runtime().block_on(async {
        let mut bytes = encode_frame(&task::Error {
            message: "first".into(),
        })
        .unwrap();
        bytes.extend_from_slice(b"RAW CONTENT");
        let mut reader = bytes.as_slice();
        let first: task::Error = read_message(&mut reader, DEFAULT_MAX_FRAME).await.unwrap();
        assert_eq!(first.message, "first");
        assert_eq!(reader, b"RAW CONTENT");
    });
}

proptest! {
    /// Whatever bytes a peer sends, reading a frame returns a message or an error.
    #[test]
    fn arbitrary_bytes_never_panic_the_reader(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        runtime().block_on(async {
            let mut reader = bytes.as_slice();
            let _ = read_message::<Task, _>(&mut reader, 256).await;
        });
    }

    /// Whatever a message holds, it comes back intact.
    #[test]
    fn any_metadata_round_trips(
        name in ".*",
        size in any::<u32>(),
        hash in proptest::option::of("[0-9a-f]{64}"),
        properties in proptest::collection::btree_map(".{0,8}", ".{0,8}", 0..4),
        content_offset in proptest::option::of(any::<u64>()),
    ) {
        let message = Metadata { name, data_type: "t".into(), size, id: "i".into(), hash, properties, content_offset };
        runtime().block_on(round_trip(message));
    }
}
