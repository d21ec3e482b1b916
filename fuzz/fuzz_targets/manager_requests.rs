//! The manager's request decoders on arbitrary bytes: the wire counts never panic, and
//! whatever decodes holds exactly the elements the counts said, so that the manager's
//! limits, checked on the counts, bound what decoding builds.
#![no_main]

use domain_proto::discovery::{HoldersRequest, JoinClusterRequest};
use domain_proto::task::JobRequest;
use domain_proto::wire::{fields, job_shape, join_shape};
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    let (selector, body) = data.split_first().unwrap_or((&0, &[]));
    // Walking the fields ends, with an error or not, within the body.
    for field in fields(body) {
        if field.is_err() {
            break;
        }
    }
    match selector % 3 {
        0 => {
            let shape = job_shape(body);
            if let Ok(job) = JobRequest::decode(body) {
                let shape = shape.expect("a message that decodes is a valid encoding");
                assert_eq!(job.tasks.len(), shape.tasks);
                let most = job.tasks.iter().map(|t| t.needs.len()).max().unwrap_or(0);
                assert_eq!(most, shape.most_needs);
            }
        }
        1 => {
            let shape = join_shape(body);
            if let Ok(join) = JoinClusterRequest::decode(body) {
                let shape = shape.expect("a message that decodes is a valid encoding");
                assert_eq!(join.node.capabilities.len(), shape.capabilities);
                let domains = join.holdings.map_or(0, |h| h.domains.len());
                assert_eq!(domains, shape.domains);
            }
        }
        _ => {
            let _ = HoldersRequest::decode(body);
        }
    }
});
