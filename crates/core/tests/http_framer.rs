//! HTTP/1.x as the data plane's stream framer: the progress of a reply handed over in its
//! middle survives the replication stream exactly, and no bytes make its decoder panic or
//! accept what it did not write.

use proptest::prelude::*;
use steadfast_core::http::{CutFraming, CutPoint, EntityTag, Http1, NotResumable};
use steadfast_core::stream_framer::StreamFramer;

/// Where a reply adopted in its middle stands: a cut point, or why it cannot be resumed (the
/// reasons a primary finds in a reply it is sending).
fn progress() -> impl Strategy<Value = Result<CutPoint, NotResumable>> {
    let cut = (
        0..u64::MAX / 2,
        0..u64::MAX / 2,
        prop_oneof![Just(None), any::<bool>().prop_map(Some)],
        any::<bool>(),
        proptest::collection::vec(0x23u8..0x7f, 0..40),
    )
        .prop_map(
            |(payload_sent, remaining, chunked, weak, opaque)| CutPoint {
                validator: EntityTag { weak, opaque },
                payload_sent,
                framing: match chunked {
                    None => CutFraming::Length { remaining },
                    Some(crlf_owed) => CutFraming::Chunked {
                        remaining,
                        crlf_owed,
                    },
                },
            },
        );
    let why = prop_oneof![
        "[ -~]{0,80}".prop_map(NotResumable::Framing),
        Just(NotResumable::HeadIncomplete),
        any::<u16>().prop_map(NotResumable::Status),
        Just(NotResumable::NoValidator),
        Just(NotResumable::UntilClose),
        Just(NotResumable::InsideFraming),
        Just(NotResumable::Ended),
    ];
    prop_oneof![cut.prop_map(Ok), why.prop_map(Err)]
}

proptest! {
    #[test]
    fn a_progress_round_trips(progress in progress()) {
        let mut bytes = Vec::new();
        Http1::encode_progress(&progress, &mut bytes);
        prop_assert_eq!(Http1::decode_progress(&bytes), Ok(progress));
    }

    /// Every strict prefix is refused, and so is anything after the end.
    #[test]
    fn a_cut_or_padded_progress_is_refused(progress in progress(), extra in 1usize..8) {
        let mut bytes = Vec::new();
        Http1::encode_progress(&progress, &mut bytes);
        for len in 0..bytes.len() {
            prop_assert!(Http1::decode_progress(&bytes[..len]).is_err(), "prefix of {}", len);
        }
        bytes.extend(std::iter::repeat_n(0, extra));
        prop_assert!(Http1::decode_progress(&bytes).is_err());
    }

    #[test]
    fn no_bytes_make_the_decoder_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = Http1::decode_progress(&bytes);
    }
}
