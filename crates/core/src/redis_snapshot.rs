//! A copy of a live replica's Redis data, for rebuilding a replica that restarted empty or
//! fell out of the group (active mode, issue 18 item 4).
//!
//! Why DUMP/RESTORE and not Redis' own `REPLICAOF`/`SYNC`: the copy must hold exactly the
//! updates up to one ordering number, so that the rebuilt replica runs the ordered stream from
//! the next one, each update once. The source replica holds back its next update while the
//! copy is taken, which pins the number; Redis' replication offset has no relation to the
//! ordering numbers, and its full sync would also need each member's server reachable from the
//! others, where in active mode they listen on the loopback address only, behind the daemons.
//! DUMP carries Redis' own serialization (with its RDB version and a checksum that RESTORE
//! checks), so every type, encoding and expiry comes across as the server holds it, and a
//! server of another version refuses it loudly rather than loading something else.
//!
//! This module only decides: what to ask the source's server ([`DUMP_SCRIPT`], per database
//! listed by `INFO keyspace`), how its reply becomes the requests that load it
//! ([`restore_requests`]), and how those are cut into link frames ([`cut_parts`]).

use crate::resp_request::encode_request;
use crate::resp_value::{decode_whole_value, RespData, ValueLimits};

/// One database's keys with their DUMP payloads and absolute expiry (ms since the epoch, -1
/// for none), as one flat array `[key, dump, expire_at, …]`. A script runs whole, so no key
/// changes while it is read, and its reply is one round trip.
pub const DUMP_SCRIPT: &str = "local out = {} \
for _, key in ipairs(redis.call('KEYS', '*')) do \
local dump = redis.call('DUMP', key) \
if dump then \
out[#out + 1] = key \
out[#out + 1] = dump \
out[#out + 1] = redis.call('PEXPIRETIME', key) \
end \
end \
return out";

/// Why a copy could not be read or loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("the dump of database {db}: {what}")]
    BadDump { db: u32, what: String },
    #[error("INFO keyspace: {what}")]
    BadKeyspace { what: String },
}

/// The databases that hold keys, from the reply to `INFO keyspace` (a bulk string of lines
/// `db0:keys=3,expires=0,avg_ttl=0`).
pub fn keyspace_databases(reply: &[u8]) -> Result<Vec<u32>, SnapshotError> {
    let value = decode_whole_value(reply, ValueLimits::default()).map_err(|e| {
        SnapshotError::BadKeyspace {
            what: e.to_string(),
        }
    })?;
    let text = match &value.data {
        RespData::BulkString(bytes) | RespData::Verbatim { text: bytes, .. } => bytes,
        RespData::SimpleError(e) | RespData::BulkError(e) => {
            return Err(SnapshotError::BadKeyspace {
                what: format!("the server answered {}", String::from_utf8_lossy(e)),
            })
        }
        other => {
            return Err(SnapshotError::BadKeyspace {
                what: format!("a {} reply, not a bulk string", other.type_name()),
            })
        }
    };
    let mut databases = Vec::new();
    for line in String::from_utf8_lossy(text).lines() {
        let Some(rest) = line.strip_prefix("db") else {
            continue;
        };
        let Some((number, _)) = rest.split_once(':') else {
            continue;
        };
        let db = number.parse().map_err(|_| SnapshotError::BadKeyspace {
            what: format!("a database line {line:?} without a number"),
        })?;
        databases.push(db);
    }
    Ok(databases)
}

/// The requests that load database `db` of a copy into an emptied server: `SELECT db`, then
/// `RESTORE key expire_at dump REPLACE ABSTTL` for each key of [`DUMP_SCRIPT`]'s `reply`
/// (expire_at 0: none).
pub fn restore_requests(db: u32, reply: &[u8]) -> Result<Vec<Vec<u8>>, SnapshotError> {
    let bad = |what: String| SnapshotError::BadDump { db, what };
    let limits = ValueLimits {
        max_elements: u64::MAX,
        max_bulk: u64::MAX,
        ..ValueLimits::default()
    };
    let value = decode_whole_value(reply, limits).map_err(|e| bad(e.to_string()))?;
    let items = match &value.data {
        RespData::Array(items) => items,
        RespData::SimpleError(e) | RespData::BulkError(e) => {
            return Err(bad(format!(
                "the server answered {}",
                String::from_utf8_lossy(e)
            )))
        }
        other => return Err(bad(format!("a {} reply, not an array", other.type_name()))),
    };
    if items.len() % 3 != 0 {
        return Err(bad(format!(
            "{} elements, not key, dump, expiry triples",
            items.len()
        )));
    }
    let mut requests = vec![encode_request(&[
        b"SELECT".to_vec(),
        db.to_string().into_bytes(),
    ])];
    for triple in items.chunks_exact(3) {
        let (RespData::BulkString(key), RespData::BulkString(dump), RespData::Integer(expire_at)) =
            (&triple[0].data, &triple[1].data, &triple[2].data)
        else {
            return Err(bad(format!(
                "an entry of {}, {}, {} instead of key, dump, expiry",
                triple[0].data.type_name(),
                triple[1].data.type_name(),
                triple[2].data.type_name()
            )));
        };
        let expire_at = (*expire_at).max(0);
        requests.push(encode_request(&[
            b"RESTORE".to_vec(),
            key.clone(),
            expire_at.to_string().into_bytes(),
            dump.clone(),
            b"REPLACE".to_vec(),
            b"ABSTTL".to_vec(),
        ]));
    }
    Ok(requests)
}

/// Cuts `requests` into parts of about `max_bytes` (one request is never split): each part's
/// request count and bytes.
pub fn cut_parts(requests: Vec<Vec<u8>>, max_bytes: usize) -> Vec<(u64, Vec<u8>)> {
    let mut parts: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut current: (u64, Vec<u8>) = (0, Vec::new());
    for request in requests {
        if current.0 > 0 && current.1.len() + request.len() > max_bytes {
            parts.push(std::mem::take(&mut current));
        }
        current.0 += 1;
        current.1.extend_from_slice(&request);
    }
    if current.0 > 0 {
        parts.push(current);
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resp_request::request_words;

    fn bulk(bytes: &[u8]) -> Vec<u8> {
        let mut out = format!("${}\r\n", bytes.len()).into_bytes();
        out.extend_from_slice(bytes);
        out.extend_from_slice(b"\r\n");
        out
    }

    #[test]
    fn a_dump_becomes_select_then_one_restore_per_key_with_its_absolute_expiry() {
        let mut reply = b"*6\r\n".to_vec();
        reply.extend(bulk(b"k1"));
        reply.extend(bulk(b"\x00\x01binary\r\n"));
        reply.extend(b":-1\r\n");
        reply.extend(bulk(b"k2"));
        reply.extend(bulk(b"d2"));
        reply.extend(b":1900000000000\r\n");
        let requests = restore_requests(3, &reply).unwrap();
        let words: Vec<Vec<Vec<u8>>> = requests.iter().map(|r| request_words(r).unwrap()).collect();
        assert_eq!(words[0], vec![b"SELECT".to_vec(), b"3".to_vec()]);
        assert_eq!(
            words[1],
            vec![
                b"RESTORE".to_vec(),
                b"k1".to_vec(),
                b"0".to_vec(),
                b"\x00\x01binary\r\n".to_vec(),
                b"REPLACE".to_vec(),
                b"ABSTTL".to_vec()
            ]
        );
        assert_eq!(words[2][2], b"1900000000000".to_vec());
        assert_eq!(restore_requests(0, b"*0\r\n").unwrap().len(), 1);
    }

    #[test]
    fn a_dump_that_is_not_triples_or_an_error_is_refused_with_the_database() {
        let e = restore_requests(2, b"-ERR unknown command\r\n").unwrap_err();
        assert!(e.to_string().contains("database 2"), "{e}");
        assert!(e.to_string().contains("unknown command"), "{e}");
        let mut reply = b"*2\r\n".to_vec();
        reply.extend(bulk(b"k"));
        reply.extend(bulk(b"d"));
        assert!(restore_requests(0, &reply).is_err());
        let mut reply = b"*3\r\n".to_vec();
        reply.extend(bulk(b"k"));
        reply.extend(b":1\r\n");
        reply.extend(b":1\r\n");
        assert!(restore_requests(0, &reply).is_err());
    }

    #[test]
    fn the_keyspace_names_the_databases_with_keys() {
        let text =
            b"# Keyspace\r\ndb0:keys=3,expires=0,avg_ttl=0\r\ndb5:keys=1,expires=1,avg_ttl=9\r\n";
        assert_eq!(keyspace_databases(&bulk(text)).unwrap(), vec![0, 5]);
        assert_eq!(
            keyspace_databases(&bulk(b"# Keyspace\r\n")).unwrap(),
            Vec::<u32>::new()
        );
        assert!(keyspace_databases(b"-ERR no\r\n").is_err());
    }

    #[test]
    fn parts_keep_requests_whole_and_in_order() {
        let requests: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 40]).collect();
        let parts = cut_parts(requests.clone(), 100);
        assert!(parts.iter().all(|(n, bytes)| *n >= 1 && bytes.len() <= 100));
        assert_eq!(parts.iter().map(|(n, _)| n).sum::<u64>(), 10);
        let joined: Vec<u8> = parts.into_iter().flat_map(|(_, b)| b).collect();
        assert_eq!(joined, requests.concat());
        // A request longer than a part goes alone.
        let parts = cut_parts(vec![vec![1; 300], vec![2; 10]], 100);
        assert_eq!(parts.len(), 2);
        assert!(cut_parts(Vec::new(), 100).is_empty());
    }
}
