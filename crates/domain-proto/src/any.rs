//! Packing messages into `task.Any` and out again. posemesh peers put a message's bare
//! name in `type_url` (`"ConsumeDataInputV1"`, not a `type.googleapis.com/…` URL), and so
//! do we.

use prost::Message;

use crate::task::Any;

/// The `type_url` of a replicate job's task data ([`crate::task::ReplicateDataInputV1`]),
/// which the manager's copy tasks carry too.
pub const REPLICATE_INPUT: &str = "ReplicateDataInputV1";

/// The `type_url` of a delete job's task data ([`crate::task::DeleteDataInputV1`]): the ids
/// the client deletes, which the manager remembers (its repair must not copy them again).
pub const DELETE_INPUT: &str = "DeleteDataInputV1";

impl Any {
    /// `message`, encoded, under the bare name `type_url`.
    pub fn pack(type_url: &str, message: &impl Message) -> Self {
        Self {
            type_url: type_url.to_owned(),
            value: message.encode_to_vec(),
        }
    }

    /// The message inside, when `type_url` names it: `None` for another type, an error
    /// when the bytes do not decode.
    ///
    /// # Errors
    /// [`prost::DecodeError`] for bytes that are not a `M`.
    pub fn unpack<M: Message + Default>(
        &self,
        type_url: &str,
    ) -> Option<Result<M, prost::DecodeError>> {
        (self.type_url == type_url).then(|| M::decode(self.value.as_slice()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{ConsumeDataInputV1, ReplicateDataInputV1};

    #[test]
    fn a_packed_message_unpacks_under_its_name_only() {
        let input = ReplicateDataInputV1 {
            job_id: "j".into(),
            task_name: "upload".into(),
            ids: vec!["a".into(), "b".into()],
            replaces: None,
        };
        let any = Any::pack("ReplicateDataInputV1", &input);
        assert_eq!(any.type_url, "ReplicateDataInputV1");
        let back: ReplicateDataInputV1 = any.unpack("ReplicateDataInputV1").unwrap().unwrap();
        assert_eq!(back, input);
        assert!(
            any.unpack::<ConsumeDataInputV1>("ConsumeDataInputV1")
                .is_none()
        );
        let garbage = Any {
            type_url: "ReplicateDataInputV1".into(),
            value: vec![0xff; 3],
        };
        assert!(matches!(
            garbage.unpack::<ReplicateDataInputV1>("ReplicateDataInputV1"),
            Some(Err(_))
        ));
    }
}
