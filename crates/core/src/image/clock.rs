//! The timestamp clock of a rebuilt connection (RFC 7323): where the new primary's TSval
//! starts, so that the client accepts its segments and drops the old primary's.

use std::time::Duration;

/// The new primary's timestamp clock starts this far past the old one's last known value, so
/// it is never behind what the client saw: PAWS drops segments with older timestamps, and the
/// client's TSecr lags the old primary's clock by up to a delayed ACK (or more, when the old
/// primary's kernel lives on after its daemon froze and still acknowledges). Being ahead costs
/// nothing, and it makes the client drop any late segment of a frozen old primary (only its
/// RSTs pass PAWS, and the dead-man switch stops those).
pub const TIMESTAMP_MARGIN_MS: u32 = 10_000;

/// The TSval of a rebuilt connection: the old primary's last value the client echoed
/// (`last_tsecr`, none seen: 0), plus the time the client has been silent since (`idle`), plus
/// [`TIMESTAMP_MARGIN_MS`]. Timestamps compare modulo 2^32 (RFC 7323), so the sum wraps.
pub fn rebuilt_tsval(last_tsecr: Option<u32>, idle: Duration) -> u32 {
    // An idle time past 2^30 ms (12 days) is capped: a clock that jumps half the number space
    // ahead would look behind to the client.
    let elapsed = u32::try_from(idle.as_millis()).unwrap_or(u32::MAX / 4);
    last_tsecr
        .unwrap_or(0)
        .wrapping_add(elapsed)
        .wrapping_add(TIMESTAMP_MARGIN_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_starts_past_what_the_client_echoed_by_its_silence_and_the_margin() {
        assert_eq!(
            rebuilt_tsval(Some(1_000), Duration::from_millis(250)),
            1_000 + 250 + TIMESTAMP_MARGIN_MS
        );
        assert_eq!(
            rebuilt_tsval(None, Duration::ZERO),
            TIMESTAMP_MARGIN_MS,
            "no echo seen: the margin alone"
        );
    }

    #[test]
    fn the_clock_wraps_as_timestamps_do() {
        let tsval = rebuilt_tsval(Some(u32::MAX - 5), Duration::from_millis(10));
        assert_eq!(tsval, 4 + TIMESTAMP_MARGIN_MS);
        // Ahead of the echo in the modular order RFC 7323 compares in.
        assert!((tsval.wrapping_sub(u32::MAX - 5) as i32) > 0);
    }

    #[test]
    fn a_very_long_silence_never_puts_the_clock_behind_the_echo() {
        for idle_ms in [u64::from(u32::MAX), u64::MAX / 2, 1 << 40] {
            for echoed in [0, 1 << 31, u32::MAX] {
                let tsval = rebuilt_tsval(Some(echoed), Duration::from_millis(idle_ms));
                assert!(
                    (tsval.wrapping_sub(echoed) as i32) > 0,
                    "idle {idle_ms} ms after {echoed}: {tsval}"
                );
            }
        }
    }
}
