//! Reading a message's protobuf encoding field by field, without decoding it: how a
//! receiver counts the elements of repeated fields before building any of them.
//!
//! Decoding builds one struct per element of a repeated field, and an empty element
//! costs two bytes on the wire: a 4 MiB frame of empty tasks would become two million
//! `TaskRequest`s. [`fields`] walks an encoding without allocating, so a reader can
//! refuse such a frame first.
//!
//! ```
//! use domain_proto::task::{JobRequest, TaskRequest};
//! use domain_proto::wire::{Value, fields};
//! use prost::Message as _;
//!
//! let job = JobRequest { tasks: vec![TaskRequest::default(); 3], ..Default::default() };
//! let body = job.encode_to_vec();
//! // Field 2 of JobRequest is `tasks`.
//! let tasks = fields(&body).filter(|field| matches!(field, Ok((2, Value::Bytes(_))))).count();
//! assert_eq!(tasks, 3);
//! ```

/// A field's value, as the wire has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    /// A varint.
    Varint(u64),
    /// Eight bytes.
    Fixed64(u64),
    /// A length-delimited value: bytes, a string, an embedded message or a packed array.
    Bytes(&'a [u8]),
    /// Four bytes.
    Fixed32(u32),
}

/// An encoding that is not valid protobuf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid protobuf encoding at byte {at}")]
pub struct WireError {
    /// Where in the encoding.
    pub at: usize,
}

/// The top-level fields of the encoding `body`, in order: each field's number and value.
/// Nested messages are [`Value::Bytes`], to walk with `fields` again. The iteration ends
/// at the first invalid byte, with an error.
#[must_use]
pub fn fields(body: &[u8]) -> Fields<'_> {
    Fields {
        body,
        at: 0,
        failed: false,
    }
}

/// The iterator of [`fields`].
#[derive(Debug, Clone)]
pub struct Fields<'a> {
    body: &'a [u8],
    at: usize,
    failed: bool,
}

impl<'a> Fields<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.body.get(self.at)?;
            self.at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    fn take(&mut self, len: u64) -> Option<&'a [u8]> {
        let len = usize::try_from(len).ok()?;
        let end = self.at.checked_add(len)?;
        let bytes = self.body.get(self.at..end)?;
        self.at = end;
        Some(bytes)
    }

    fn next_field(&mut self) -> Option<(u32, Value<'a>)> {
        let key = self.varint()?;
        let number = u32::try_from(key >> 3).ok().filter(|n| *n > 0)?;
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => Value::Fixed64(u64::from_le_bytes(self.take(8)?.try_into().ok()?)),
            2 => {
                let len = self.varint()?;
                Value::Bytes(self.take(len)?)
            }
            5 => Value::Fixed32(u32::from_le_bytes(self.take(4)?.try_into().ok()?)),
            // Groups (3, 4) are not in proto2 messages we accept; 6 and 7 do not exist.
            _ => return None,
        };
        Some((number, value))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, Value<'a>), WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.at == self.body.len() {
            return None;
        }
        let start = self.at;
        match self.next_field() {
            Some(field) => Some(Ok(field)),
            None => {
                self.failed = true;
                Some(Err(WireError { at: start }))
            }
        }
    }
}

/// How many times field `number` appears at the top level of `body`.
///
/// # Errors
/// [`WireError`] for an invalid encoding.
pub fn count(body: &[u8], number: u32) -> Result<usize, WireError> {
    let mut found = 0;
    for field in fields(body) {
        if field?.0 == number {
            found += 1;
        }
    }
    Ok(found)
}

/// What a `JobRequest` encoding holds, counted without decoding it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobShape {
    /// Its tasks.
    pub tasks: usize,
    /// The most dependencies (`needs`) of one task.
    pub most_needs: usize,
}

/// Counts the tasks of the `JobRequest` encoding `body`, and the dependencies of each.
///
/// # Errors
/// [`WireError`] for an invalid encoding.
pub fn job_shape(body: &[u8]) -> Result<JobShape, WireError> {
    // JobRequest.tasks = 2; TaskRequest.needs = 5.
    let mut shape = JobShape::default();
    for field in fields(body) {
        if let (2, value) = field? {
            shape.tasks += 1;
            if let Value::Bytes(task) = value {
                shape.most_needs = shape.most_needs.max(count(task, 5)?);
            }
        }
    }
    Ok(shape)
}

/// What a `JoinClusterRequest` encoding holds, counted without decoding it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JoinShape {
    /// The capabilities of its node.
    pub capabilities: usize,
    /// The domains of its holdings.
    pub domains: usize,
}

/// Counts the capabilities and the reported domains of the `JoinClusterRequest` encoding
/// `body`. A message field that appears more than once is merged by decoding, so its
/// occurrences are counted together.
///
/// # Errors
/// [`WireError`] for an invalid encoding.
pub fn join_shape(body: &[u8]) -> Result<JoinShape, WireError> {
    // JoinClusterRequest: node = 1, holdings = 2; Node.capabilities = 2;
    // Holdings.domains = 1.
    let mut shape = JoinShape::default();
    for field in fields(body) {
        match field? {
            (1, Value::Bytes(node)) => shape.capabilities += count(node, 2)?,
            (2, Value::Bytes(holdings)) => shape.domains += count(holdings, 1)?,
            _ => {}
        }
    }
    Ok(shape)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::task::{JobRequest, TaskRequest};

    #[test]
    fn every_field_of_a_message_is_seen_with_its_value() {
        let task = TaskRequest {
            name: "a".into(),
            needs: vec!["b".into(), "c".into()],
            max_budget: Some(300),
            ..Default::default()
        };
        let body = task.encode_to_vec();
        let seen: Vec<(u32, Value<'_>)> = fields(&body).map(Result::unwrap).collect();
        assert!(seen.contains(&(1, Value::Bytes(b"a"))));
        assert!(seen.contains(&(3, Value::Varint(300))));
        assert_eq!(count(&body, 5).unwrap(), 2);
    }

    #[test]
    fn two_million_empty_tasks_are_counted_without_being_built() {
        // What a hostile submitter sends: field 2, length 0, over and over.
        let mut body = Vec::with_capacity(4 << 20);
        while body.len() < 4 << 20 {
            body.extend_from_slice(&[0x12, 0x00]);
        }
        assert_eq!(count(&body, 2).unwrap(), 2 << 20);
        assert_eq!(JobRequest::decode(&body[..20]).unwrap().tasks.len(), 10);
    }

    #[test]
    fn a_truncated_or_invalid_encoding_is_an_error_where_it_starts() {
        let body = JobRequest {
            name: "job".into(),
            ..Default::default()
        }
        .encode_to_vec();
        // Cut inside its last field: the error names where that field starts.
        let cut = &body[..body.len() - 1];
        let last = body.len() - 2;
        assert_eq!(count(cut, 2), Err(WireError { at: last }));
        // Field number 0 does not exist.
        assert_eq!(count(&[0x02, 0x00], 2), Err(WireError { at: 0 }));
        // A length past the end.
        assert!(count(&[0x12, 0x05, 0x00], 2).is_err());
        assert_eq!(count(&[], 2), Ok(0));
    }

    #[test]
    fn a_message_field_sent_twice_is_counted_as_decoding_merges_it() {
        use crate::discovery::{Capability, JoinClusterRequest, Node};
        let node = Node {
            capabilities: vec![Capability::default(); 3],
            ..Default::default()
        };
        let mut body = JoinClusterRequest {
            node: node.clone(),
            ..Default::default()
        }
        .encode_to_vec();
        // The same field again: decoding merges it into one node of six capabilities.
        body.extend(
            JoinClusterRequest {
                node,
                ..Default::default()
            }
            .encode_to_vec(),
        );
        let decoded = JoinClusterRequest::decode(body.as_slice()).unwrap();
        assert_eq!(decoded.node.capabilities.len(), 6);
        assert_eq!(join_shape(&body).unwrap().capabilities, 6);
    }

    #[test]
    fn a_job_is_counted_by_tasks_and_its_largest_dependency_list() {
        let task = |needs: usize| TaskRequest {
            needs: vec!["x".into(); needs],
            ..Default::default()
        };
        let body = JobRequest {
            tasks: vec![task(1), task(4), task(0)],
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(
            job_shape(&body).unwrap(),
            JobShape {
                tasks: 3,
                most_needs: 4
            }
        );
    }
}
