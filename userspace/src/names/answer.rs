//! The answer to one DNS query from one container: oxlay's names are answered from the
//! directory, everything else goes to the host's resolvers.
use std::net::Ipv4Addr;

use hickory_proto::{
    op::{Message, MessageType, OpCode, ResponseCode},
    rr::{rdata::A, DNSClass, RData, Record, RecordType},
};

use super::directory::{Directory, Lookup};

/// Answers carry no TTL: a name stops resolving as soon as its container goes, even
/// behind a caching stub.
const TTL: u32 = 0;

#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// Send these bytes back.
    Answer(Vec<u8>),
    /// Not ours: pass the query to the upstream resolvers unchanged.
    Forward,
    /// Not a DNS query at all: no answer.
    Drop,
}

/// What to do with `query` (the bytes of one DNS message) from `source`.
pub fn reply(directory: &Directory, source: Ipv4Addr, query: &[u8]) -> Reply {
    let request = match Message::from_vec(query) {
        Ok(request) => request,
        Err(_) if query.len() >= 2 => {
            // Unparseable, but it has an ID to answer to.
            let id = u16::from_be_bytes([query[0], query[1]]);
            return encode(&Message::error_msg(
                id,
                OpCode::Query,
                ResponseCode::FormErr,
            ));
        }
        Err(_) => return Reply::Drop,
    };
    if request.message_type() != MessageType::Query {
        return Reply::Drop;
    }
    if request.op_code() != OpCode::Query {
        return encode(&Message::error_msg(
            request.id(),
            request.op_code(),
            ResponseCode::NotImp,
        ));
    }
    let [question] = request.queries() else {
        return Reply::Forward;
    };
    if question.query_class() != DNSClass::IN {
        return Reply::Forward;
    }
    let addresses = match directory.lookup(source, &question.name().to_ascii()) {
        Lookup::Container(addresses) => addresses,
        Lookup::NotOurs => return Reply::Forward,
    };
    let mut response = Message::new();
    response
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_authoritative(true)
        .set_recursion_desired(request.recursion_desired())
        .set_recursion_available(true)
        .set_response_code(ResponseCode::NoError)
        .add_query(question.clone());
    // Other types of a container's name (AAAA above all) are empty, not NXDOMAIN: a
    // stub that asks for both must not conclude the name does not exist.
    if question.query_type() == RecordType::A {
        for address in addresses {
            let record = Record::from_rdata(question.name().clone(), TTL, RData::A(A(address)));
            response.add_answer(record);
        }
    }
    encode(&response)
}

/// A SERVFAIL answer to `query` (its question kept), when no upstream answered.
pub fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    error(query, ResponseCode::ServFail)
}

/// A REFUSED answer to `query`, for askers the resolver does not serve.
pub fn refused(query: &[u8]) -> Option<Vec<u8>> {
    error(query, ResponseCode::Refused)
}

fn error(query: &[u8], code: ResponseCode) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    if request.message_type() != MessageType::Query {
        return None;
    }
    let mut m = Message::error_msg(request.id(), request.op_code(), code);
    m.set_recursion_desired(request.recursion_desired())
        .set_recursion_available(true);
    for question in request.queries() {
        m.add_query(question.clone());
    }
    m.to_vec().ok()
}

fn encode(message: &Message) -> Reply {
    match message.to_vec() {
        Ok(bytes) => Reply::Answer(bytes),
        Err(e) => {
            log::warn!("names: cannot encode an answer: {e}");
            Reply::Drop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{model, store::KeyValue, store::WatchEvent};
    use hickory_proto::{
        op::Query,
        rr::{Name, RecordType},
    };

    fn directory() -> Directory {
        let mut d = Directory::new("a");
        let put = |key: String, value: serde_json::Value| {
            WatchEvent::Put(KeyValue {
                key,
                value: value.to_string(),
                mod_revision: 1,
                lease: 0,
            })
        };
        d.apply(&put(
            format!("{}a", model::HOSTS),
            serde_json::json!({"name": "a", "underlay_address": "192.168.50.1",
                               "vtep_mac": "02:00:00:00:00:01"}),
        ));
        d.apply(&put(
            format!("{}web/10.1.0.7", model::ENDPOINTS),
            serde_json::json!({"network": "web", "address": "10.1.0.7", "host": "a",
                               "sandbox": "s", "names": ["srv"]}),
        ));
        d
    }

    fn query(name: &str, kind: RecordType) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(4242)
            .set_recursion_desired(true)
            .add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
        m.to_vec().unwrap()
    }

    fn answer(reply: Reply) -> Message {
        match reply {
            Reply::Answer(bytes) => Message::from_vec(&bytes).unwrap(),
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    const ASKER: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 7);

    #[test]
    fn a_container_name_is_answered_with_its_address() {
        let m = answer(reply(&directory(), ASKER, &query("srv.", RecordType::A)));
        assert_eq!(m.id(), 4242);
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert!(m.authoritative() && m.recursion_desired());
        let addresses: Vec<_> = m.answers().iter().map(|r| r.data().clone()).collect();
        assert_eq!(addresses, vec![RData::A(A(ASKER))]);
        assert_eq!(m.answers()[0].ttl(), 0);
    }

    #[test]
    fn other_types_of_a_container_name_are_empty_not_missing() {
        let m = answer(reply(&directory(), ASKER, &query("srv", RecordType::AAAA)));
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert!(m.answers().is_empty());
    }

    #[test]
    fn other_names_and_strangers_go_upstream() {
        let d = directory();
        let outside = query("example.org.", RecordType::A);
        assert_eq!(reply(&d, ASKER, &outside), Reply::Forward);
        let stranger = Ipv4Addr::new(10, 9, 9, 9);
        assert_eq!(
            reply(&d, stranger, &query("srv", RecordType::A)),
            Reply::Forward
        );
    }

    #[test]
    fn garbage_is_refused_without_a_panic() {
        let d = directory();
        assert_eq!(reply(&d, ASKER, &[]), Reply::Drop);
        let m = answer(reply(&d, ASKER, &[0x12, 0x34, 0xff]));
        assert_eq!((m.id(), m.response_code()), (0x1234, ResponseCode::FormErr));
        assert_eq!(refused(&[1]), None);
        let m = Message::from_vec(&refused(&query("srv", RecordType::A)).unwrap()).unwrap();
        assert_eq!((m.id(), m.response_code()), (4242, ResponseCode::Refused));
        // A response is never answered (no loops between resolvers).
        let mut response = Message::from_vec(&query("srv", RecordType::A)).unwrap();
        response.set_message_type(MessageType::Response);
        assert_eq!(reply(&d, ASKER, &response.to_vec().unwrap()), Reply::Drop);
    }
}
