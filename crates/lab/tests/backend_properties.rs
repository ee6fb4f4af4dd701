//! Properties of the request parser and the byte generator.

use proptest::prelude::*;
use steadfast_lab::backend::{ParseStatus, Request, RequestError, RequestLimits, RequestParser};
use steadfast_lab::generator::{expected_bytes, fill_at, BodyVerifier};

/// Feeds `bytes` to a parser in pieces cut at `cuts`, collecting requests until the first error.
fn parse_in_pieces(
    bytes: &[u8],
    cuts: &[usize],
    limits: RequestLimits,
) -> (Vec<Request>, Option<RequestError>) {
    let mut parser = RequestParser::new(limits);
    let mut buf = Vec::new();
    let mut requests = Vec::new();
    let mut boundaries: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    boundaries.push(bytes.len());
    boundaries.sort_unstable();
    let mut fed = 0;
    for boundary in boundaries {
        buf.extend_from_slice(&bytes[fed..boundary]);
        fed = boundary;
        loop {
            match parser.parse(&mut buf) {
                Ok(ParseStatus::Complete(request)) => requests.push(request),
                Ok(ParseStatus::Incomplete { .. }) => break,
                Err(error) => return (requests, Some(error)),
            }
        }
    }
    (requests, None)
}

fn small_limits() -> RequestLimits {
    RequestLimits {
        max_head_bytes: 512,
        max_body_bytes: 256,
    }
}

/// Request-shaped input: fragments of valid syntax glued in random order, which reaches far
/// deeper into the parser than uniform random bytes.
fn request_like() -> impl Strategy<Value = Vec<u8>> {
    let fragment = prop_oneof![
        Just(b"GET /bytes/10?seed=1 HTTP/1.1\r\n".to_vec()),
        Just(b"POST /commit HTTP/1.1\r\n".to_vec()),
        Just(b"HEAD / HTTP/1.0\r\n".to_vec()),
        Just(b"Content-Length: 3\r\n".to_vec()),
        Just(b"Content-Length: 99999999999999999999\r\n".to_vec()),
        Just(b"Transfer-Encoding: chunked\r\n".to_vec()),
        Just(b"Expect: 100-continue\r\n".to_vec()),
        Just(b"Connection: close\r\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"3\r\nabc\r\n".to_vec()),
        Just(b"0\r\n\r\n".to_vec()),
        Just(b"ffffffffffffffff\r\n".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..8),
    ];
    proptest::collection::vec(fragment, 0..12).prop_map(|fragments| fragments.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic_the_parser(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        parse_in_pieces(&bytes, &cuts, RequestLimits::default());
        parse_in_pieces(&bytes, &cuts, small_limits());
    }

    #[test]
    fn request_like_bytes_parse_the_same_whole_or_in_pieces(
        bytes in request_like(),
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        let (whole, whole_error) = parse_in_pieces(&bytes, &[], small_limits());
        let (pieces, pieces_error) = parse_in_pieces(&bytes, &cuts, small_limits());
        prop_assert_eq!(&whole, &pieces);
        // An error caught while incomplete may be caught earlier in pieces only for the
        // length limits; when both saw an error it is the same one.
        if let (Some(a), Some(b)) = (&whole_error, &pieces_error) {
            prop_assert_eq!(a, b);
        }
        for request in &whole {
            prop_assert!(request.body.len() as u64 <= small_limits().max_body_bytes);
        }
    }

    #[test]
    fn generator_is_deterministic_and_random_access(
        len in 0u64..20_000,
        seed in any::<u64>(),
        offset in 0u64..20_000,
        window in 0usize..300,
    ) {
        let body = expected_bytes(len, seed);
        prop_assert_eq!(body.len() as u64, len);
        prop_assert_eq!(&body, &expected_bytes(len, seed));
        // A shorter body is a prefix of a longer one.
        let longer = expected_bytes(len + 17, seed);
        prop_assert_eq!(&longer[..len as usize], &body[..]);
        // Any window can be produced without its prefix.
        let mut piece = vec![0u8; window];
        fill_at(seed, offset, &mut piece);
        let reference = expected_bytes(offset + window as u64, seed);
        prop_assert_eq!(&piece[..], &reference[offset as usize..]);
    }

    #[test]
    fn verifier_accepts_the_body_in_any_pieces_and_rejects_changes(
        len in 1u64..10_000,
        seed in any::<u64>(),
        cuts in proptest::collection::vec(any::<usize>(), 0..5),
        flip in any::<usize>(),
    ) {
        let body = expected_bytes(len, seed);
        let mut boundaries: Vec<usize> = cuts.iter().map(|c| c % body.len()).collect();
        boundaries.push(body.len());
        boundaries.sort_unstable();
        let mut verifier = BodyVerifier::new(len, seed);
        let mut from = 0;
        for boundary in boundaries {
            prop_assert!(verifier.update(&body[from..boundary]).is_ok());
            from = boundary;
        }
        prop_assert!(verifier.finish().is_ok());

        let mut corrupted = body.clone();
        corrupted[flip % body.len()] ^= 0x80;
        let mut verifier = BodyVerifier::new(len, seed);
        prop_assert!(verifier.update(&corrupted).is_err());
        let mut short = BodyVerifier::new(len, seed);
        prop_assert!(short.update(&body[..body.len() - 1]).is_ok());
        prop_assert!(short.finish().is_err());
        prop_assert!(BodyVerifier::new(len, seed.wrapping_add(1)).update(&body).is_err());
    }
}
