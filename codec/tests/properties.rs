//! Property tests of the codec: representative values round-trip, and arbitrary bytes decode
//! to a value or a `CodecError`, never a panic or an unbounded allocation.

#![allow(missing_docs)]

use std::collections::{BTreeMap, HashMap};

use cloacina_codec::{decode, encode, CodecError, DECODE_LIMIT, FORMAT_VERSION};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Side {
    Buy,
    Sell { reason: String },
    Cross(u8, i16),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Leg {
    price: f64,
    filled: bool,
    code: char,
    raw: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u64,
    qty: i32,
    big: u128,
    venue: String,
    note: Option<String>,
    side: Side,
    legs: Vec<Leg>,
    tags: BTreeMap<String, i64>,
    counts: HashMap<u16, Vec<u32>>,
    nested: Option<Box<Order>>,
}

fn side() -> impl Strategy<Value = Side> {
    prop_oneof![
        Just(Side::Buy),
        ".{0,12}".prop_map(|reason| Side::Sell { reason }),
        (any::<u8>(), any::<i16>()).prop_map(|(a, b)| Side::Cross(a, b)),
    ]
}

fn leg() -> impl Strategy<Value = Leg> {
    (
        // Finite values here (NaN != NaN); NaN has its own bit-exact property below.
        proptest::num::f64::NORMAL | proptest::num::f64::ZERO | proptest::num::f64::SUBNORMAL,
        any::<bool>(),
        any::<char>(),
        proptest::collection::vec(any::<u8>(), 0..32),
    )
        .prop_map(|(price, filled, code, raw)| Leg {
            price,
            filled,
            code,
            raw,
        })
}

fn flat_order() -> impl Strategy<Value = Order> {
    (
        (any::<u64>(), any::<i32>(), any::<u128>(), ".{0,24}"),
        (proptest::option::of(".{0,16}"), side()),
        proptest::collection::vec(leg(), 0..4),
        proptest::collection::btree_map(".{0,8}", any::<i64>(), 0..4),
        proptest::collection::hash_map(
            any::<u16>(),
            proptest::collection::vec(any::<u32>(), 0..4),
            0..4,
        ),
    )
        .prop_map(
            |((id, qty, big, venue), (note, side), legs, tags, counts)| Order {
                id,
                qty,
                big,
                venue,
                note,
                side,
                legs,
                tags,
                counts,
                nested: None,
            },
        )
}

fn order() -> impl Strategy<Value = Order> {
    (flat_order(), proptest::option::of(flat_order())).prop_map(|(mut outer, inner)| {
        outer.nested = inner.map(Box::new);
        outer
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn nested_values_round_trip(value in order()) {
        let bytes = encode(&value).expect("encodes");
        prop_assert_eq!(bytes[0], FORMAT_VERSION);
        prop_assert_eq!(decode::<Order>(&bytes).expect("decodes"), value);
    }

    #[test]
    fn collections_and_options_round_trip(
        strings in proptest::collection::vec(".{0,20}", 0..8),
        map in proptest::collection::hash_map(".{0,8}", proptest::option::of(any::<i64>()), 0..8),
        sides in proptest::collection::vec(side(), 0..6),
    ) {
        let value = (strings, map, sides);
        let bytes = encode(&value).expect("encodes");
        prop_assert_eq!(decode::<(Vec<String>, HashMap<String, Option<i64>>, Vec<Side>)>(&bytes).expect("decodes"), value);
    }

    // Every f64, NaN payloads and infinities included, comes back bit for bit.
    #[test]
    fn every_f64_round_trips_bit_exact(x in proptest::num::f64::ANY, bits in any::<u64>()) {
        for v in [x, f64::from_bits(bits), f64::NAN, -f64::NAN, f64::INFINITY, -0.0] {
            let back: (f64, Option<f64>, Vec<f64>) =
                decode(&encode(&(v, Some(v), vec![v, v])).expect("encodes")).expect("decodes");
            prop_assert_eq!(back.0.to_bits(), v.to_bits());
            prop_assert_eq!(back.1.map(f64::to_bits), Some(v.to_bits()));
            prop_assert!(back.2.iter().all(|b| b.to_bits() == v.to_bits()));
        }
    }

    // Arbitrary bytes (with a valid version byte, so bincode sees them) decode to a value or an
    // error for every type; a panic would fail the test.
    #[test]
    fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut bytes = vec![FORMAT_VERSION];
        bytes.extend_from_slice(&body);
        let _ = decode::<Order>(&bytes);
        let _ = decode::<String>(&bytes);
        let _ = decode::<Vec<u64>>(&bytes);
        let _ = decode::<HashMap<String, Vec<u8>>>(&bytes);
        let _ = decode::<(Side, Option<Leg>)>(&bytes);
        let _ = decode::<Order>(&body);
    }

    // A well-formed value cut short or with bytes flipped is an error or another value,
    // never a panic.
    #[test]
    fn damaged_encodings_never_panic(value in order(), cut in any::<proptest::sample::Index>(), flip in any::<u8>()) {
        let bytes = encode(&value).expect("encodes");
        let at = cut.index(bytes.len());
        prop_assert!(decode::<Order>(&bytes[..at]).is_err());
        let mut damaged = bytes.clone();
        damaged[at] ^= flip;
        let _ = decode::<Order>(&damaged);
    }
}

/// A varint (bincode standard) announcing `len` elements.
fn huge_prefix(len: u64) -> Vec<u8> {
    let mut bytes = vec![FORMAT_VERSION, 253];
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes
}

// Length prefixes far beyond the input are decode errors, with no attempt to allocate them
// (a String of 2^40 bytes would abort the process if it were allocated).
#[test]
fn huge_length_prefixes_are_errors_not_allocations() {
    for len in [u64::MAX, 1 << 40, DECODE_LIMIT as u64 + 1] {
        let bytes = huge_prefix(len);
        for err in [
            decode::<String>(&bytes).expect_err("string"),
            decode::<Vec<u8>>(&bytes).expect_err("bytes"),
            decode::<Vec<u64>>(&bytes).expect_err("u64s"),
            decode::<Vec<String>>(&bytes).expect_err("strings"),
            decode::<HashMap<String, u8>>(&bytes).expect_err("map"),
        ] {
            assert!(matches!(err, CodecError::Decode { .. }), "{err:?}");
        }
    }
    let err = decode::<String>(&huge_prefix(1 << 40)).expect_err("string");
    assert!(err.to_string().contains("decode limit"), "{err}");
}

// Values up to the encode limit are accepted; a value over it is refused at encode time (so
// nothing is ever written that decode would refuse).
#[test]
fn oversized_values_are_refused_when_encoded() {
    let big = vec![7u8; cloacina_codec::MAX_ENCODED_LEN + 1];
    let err = encode(&serde_bytes_like(&big)).expect_err("too large");
    assert!(matches!(err, CodecError::Encode { .. }), "{err:?}");
    assert!(err.to_string().contains("limit"), "{err}");

    let ok = vec![7u8; 1 << 20];
    let bytes = encode(&serde_bytes_like(&ok)).expect("1 MiB is fine");
    assert_eq!(
        decode::<String>(&bytes).map(|s| s.len()).ok(),
        Some(ok.len())
    );
}

/// Bytes as a string (one byte each on the wire, like `serde_bytes`), without the dependency.
fn serde_bytes_like(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("ascii")
}
