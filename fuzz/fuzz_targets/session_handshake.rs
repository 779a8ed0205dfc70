#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchboard_tests::fuzz::session_handshake(data));
