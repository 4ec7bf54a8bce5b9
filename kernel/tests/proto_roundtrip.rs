//! Every protocol message survives a postcard round trip, and garbage bytes are a decoding error,
//! never a panic.

use arbitrary::{Arbitrary, Unstructured};
use keel_kernel::head::{HeadInput, HeadOutput};
use keel_kernel::node::{NodeInput, NodeOutput};
use keel_kernel::proto::*;
use rand_core::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::{de::DeserializeOwned, Serialize};
use std::fmt::Debug;

/// Builds `count` values of `T` from seeded random bytes and round-trips each through postcard.
/// Returns how many distinct values were built (so a test can check it built something).
fn roundtrip_many<T>(seed: u64, count: usize) -> usize
where
    T: for<'a> Arbitrary<'a> + Serialize + DeserializeOwned + PartialEq + Debug,
{
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut built = 0;
    for _ in 0..count {
        let mut bytes = vec![0u8; 512];
        rng.fill_bytes(&mut bytes);
        let Ok(value) = T::arbitrary(&mut Unstructured::new(&bytes)) else { continue };
        let encoded = postcard::to_allocvec(&value).expect("every message encodes");
        let decoded: T = postcard::from_bytes(&encoded).expect("what was encoded decodes");
        assert_eq!(decoded, value, "round trip changed the message");
        built += 1;
    }
    built
}

macro_rules! roundtrip_test {
    ($name:ident, $ty:ty, $seed:expr) => {
        #[test]
        fn $name() {
            let built = roundtrip_many::<$ty>($seed, 400);
            assert!(built > 300, "only {built} values of {} were built", stringify!($ty));
        }
    };
}

roundtrip_test!(driver_to_head_roundtrips, DriverToHead, 1);
roundtrip_test!(head_to_driver_roundtrips, HeadToDriver, 2);
roundtrip_test!(head_to_node_roundtrips, HeadToNode, 3);
roundtrip_test!(node_to_head_roundtrips, NodeToHead, 4);
roundtrip_test!(node_to_node_roundtrips, NodeToNode, 5);
roundtrip_test!(hello_roundtrips, Hello, 6);
roundtrip_test!(welcome_roundtrips, Welcome, 7);
roundtrip_test!(head_input_roundtrips, HeadInput, 8);
roundtrip_test!(head_output_roundtrips, HeadOutput, 9);
roundtrip_test!(node_input_roundtrips, NodeInput, 10);
roundtrip_test!(node_output_roundtrips, NodeOutput, 11);

#[test]
fn registration_carries_the_protocol_version() {
    let hello = Hello::RegisterNode { version: PROTOCOL_VERSION, resources: Default::default(), labels: Labels::new() };
    let bytes = postcard::to_allocvec(&hello).unwrap();
    let back: Hello = postcard::from_bytes(&bytes).unwrap();
    assert!(matches!(back, Hello::RegisterNode { version, .. } if version == PROTOCOL_VERSION));
}

#[test]
fn garbage_and_truncated_frames_are_errors_not_panics() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(99);
    let mut errors = 0;
    for len in 0..2_000usize {
        let mut bytes = vec![0u8; len % 97];
        rng.fill_bytes(&mut bytes);
        if postcard::from_bytes::<DriverToHead>(&bytes).is_err() {
            errors += 1;
        }
        let _ = postcard::from_bytes::<NodeToHead>(&bytes);
        let _ = postcard::from_bytes::<Hello>(&bytes);
    }
    assert!(errors > 100, "random bytes should mostly fail to decode ({errors})");
    // A valid frame cut short fails to decode.
    let spec = TaskSpec::new(keel_kernel::TaskId(1), keel_kernel::JobId(1), "f");
    let full = postcard::to_allocvec(&DriverToHead::SubmitTask(spec.into())).unwrap();
    for cut in 0..full.len() {
        assert!(postcard::from_bytes::<DriverToHead>(&full[..cut]).is_err(), "a frame cut at {cut} decoded");
    }
}
