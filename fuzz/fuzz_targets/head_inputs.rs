//! `cargo fuzz run head_inputs` (nightly, feature `libfuzzer`): arbitrary bytes as Head inputs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    keel_fuzz::run(data);
});
