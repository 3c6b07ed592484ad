//! The checks of common/jpeg.rs on the portable run-length search (broadword select, no `pdep`), forced by
//! `ZUNE_JPEG_NO_PDEP` before this process's first decode: the one test of this binary, so nothing decodes first.
#[path = "common/jpeg.rs"]
mod jpeg;

#[test]
fn portable_refinement_decodes_as_upstream() {
    std::env::set_var("ZUNE_JPEG_NO_PDEP", "1");
    jpeg::refinement_scans_decode_exactly_as_upstream();
    jpeg::damaged_progressive_streams_decode_as_upstream_or_fail_cleanly();
}
