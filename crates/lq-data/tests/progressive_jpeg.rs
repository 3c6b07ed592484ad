//! The vendored zune-jpeg's progressive refinement decoder against the unmodified zune-jpeg (checks in
//! common/jpeg.rs), with the run-length search this CPU gets (`pdep` where it is fast).
#[path = "common/jpeg.rs"]
mod jpeg;

#[test]
fn refinement_scans_decode_exactly_as_upstream() {
    jpeg::refinement_scans_decode_exactly_as_upstream();
}

#[test]
fn damaged_progressive_streams_decode_as_upstream_or_fail_cleanly() {
    jpeg::damaged_progressive_streams_decode_as_upstream_or_fail_cleanly();
}
