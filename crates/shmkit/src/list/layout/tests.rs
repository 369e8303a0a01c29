use super::format::*;
use super::*;
use proptest::prelude::*;

fn unhex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

fn list_error(r: Result<impl std::fmt::Debug>) -> ListError {
    match r {
        Err(Error::List(e)) => e,
        other => panic!("expected a list error, got {other:?}"),
    }
}

fn values(bytes: &[u8]) -> Vec<Value> {
    let layout = Layout::attach(bytes).unwrap();
    (0..layout.len() as isize)
        .map(|i| layout.get(bytes, i).unwrap())
        .collect()
}

fn refs(values: &[Value]) -> Vec<ValueRef<'_>> {
    values.iter().map(ValueRef::from).collect()
}

/// The reference's §2.3 hexdump, row by row (CPython 3.11.7, x86-64).
const HOWDY: &str = "
    07 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00
    08 00 00 00 00 00 00 00  10 00 00 00 00 00 00 00
    18 00 00 00 00 00 00 00  20 00 00 00 00 00 00 00
    28 00 00 00 00 00 00 00  30 00 00 00 00 00 00 00
    38 00 00 00 00 00 00 00
    68 6f 77 64 79 00 00 00  48 6f 57 64 59 00 00 00
    58 39 b4 c8 76 12 71 c0  64 00 00 00 00 00 00 00
    00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 01
    2a 00 00 00 00 00 00 00
    38 73 00 00 00 00 00 00  38 73 00 00 00 00 00 00
    64 00 00 00 00 00 00 00  71 00 00 00 00 00 00 00
    78 78 78 78 78 78 3f 78  78 78 78 78 78 78 78 3f
    71 00 00 00 00 00 00 00
    01 02 00 00 03 00 00";

fn howdy_values() -> Vec<Value> {
    vec![
        Value::from("howdy"),
        Value::from(&b"HoWdY"[..]),
        Value::Float(-273.154),
        Value::Int(100),
        Value::None,
        Value::Bool(true),
        Value::Int(42),
    ]
}

#[test]
fn encodes_the_reference_hexdump_byte_for_byte() {
    let expected = unhex(HOWDY);
    assert_eq!(expected.len(), 191);
    let values = howdy_values();
    let layout = Layout::for_values(&refs(&values)).unwrap();
    assert_eq!(
        (
            layout.data_offset(),
            layout.formats_offset(),
            layout.codes_offset()
        ),
        (72, 128, 184)
    );
    assert_eq!(Layout::encode(&refs(&values)).unwrap(), expected);
}

#[test]
fn decodes_the_reference_hexdump() {
    let bytes = unhex(HOWDY);
    assert_eq!(values(&bytes), howdy_values());
    let layout = Layout::attach(&bytes[..]).unwrap();
    assert_eq!(
        layout.format(&bytes[..]).unwrap(),
        "8s8sdqxxxxxx?xxxxxxxx?q"
    );
    assert_eq!(layout.item_format(&bytes[..], -1).unwrap(), "q");
    assert_eq!(layout.get_i64(&bytes[..], 6).unwrap(), 42);
    assert_eq!(layout.get_f64(&bytes[..], 2).unwrap(), -273.154);
    assert_eq!(
        list_error(layout.get_i64(&bytes[..], 5)),
        ListError::WrongType {
            index: 5,
            expected: "int",
            found: "bool"
        }
    );
    assert_eq!(
        layout.item_type(&bytes[..], 0).unwrap(),
        ItemType::Str { width: 8 }
    );
}

/// `['123456789', 1, b'', 'é'*5, 2.5]` as CPython 3.11 writes it, with
/// the last é cut off.
const SECOND_CPYTHON: &str = "
    0500000000000000 0000000000000000 1000000000000000 1800000000000000
    2000000000000000 2800000000000000 3000000000000000
    3132333435363738 3900000000000000 0100000000000000 0000000000000000
    c3a9c3a9c3a9c3a9 0000000000000440
    3136730000000000 7100000000000000 3873000000000000 3873000000000000
    6400000000000000
    0100020100";

#[test]
fn second_example_reads_cpythons_truncation_and_sizes_by_bytes_itself() {
    let cpython = unhex(SECOND_CPYTHON);
    assert_eq!(cpython.len(), 149);
    let read = values(&cpython);
    assert_eq!(read[3], Value::from("éééé"));
    assert_eq!(
        read,
        vec![
            Value::from("123456789"),
            Value::Int(1),
            Value::Bytes(vec![]),
            Value::from("éééé"),
            Value::Float(2.5),
        ]
    );

    // shmkit gives the ten bytes of 'é'*5 a 16-byte slot: 8 bytes more,
    // and nothing lost. Everything else is as CPython lays it out.
    let ours = vec![
        Value::from("123456789"),
        Value::Int(1),
        Value::Bytes(vec![]),
        Value::from("ééééé"),
        Value::Float(2.5),
    ];
    let bytes = Layout::encode(&refs(&ours)).unwrap();
    assert_eq!(bytes.len(), 157);
    let layout = Layout::attach(&bytes[..]).unwrap();
    assert_eq!(layout.format(&bytes[..]).unwrap(), "16sq8s16sd");
    assert_eq!(values(&bytes), ours);
    assert_eq!(&bytes[..72], {
        let mut head = cpython[..40].to_vec();
        head.extend(unhex(
            "3000000000000000 3800000000000000 3132333435363738 3900000000000000",
        ));
        head
    });
}

#[test]
fn empty_list_is_sixteen_zeros() {
    let bytes = Layout::encode(&[]).unwrap();
    assert_eq!(bytes, [0u8; 16]);
    let layout = Layout::attach(&bytes[..]).unwrap();
    assert!(layout.is_empty());
    assert_eq!(layout.size(), 16);
    assert_eq!(layout.format(&bytes[..]).unwrap(), "");
    assert!(layout.get(&bytes[..], 0).is_err());
    assert!(layout.get(&bytes[..], -1).is_err());
    // A segment may be larger than its list.
    assert_eq!(Layout::attach(&[0u8; 4096][..]).unwrap().len(), 0);
}

#[test]
fn a_bytes_slot_may_be_cut_mid_character_by_cpython() {
    // CPython stores '€'*5 as its first 8 UTF-8 bytes.
    let mut bytes = Layout::encode(&[ValueRef::Str("€€")]).unwrap();
    bytes[24..32].copy_from_slice(&"€€€".as_bytes()[..8]);
    assert_eq!(
        list_error(Layout::attach(&bytes[..]).unwrap().get(&bytes[..], 0)),
        ListError::InvalidUtf8 {
            index: 0,
            valid_up_to: 6
        }
    );
}

fn python38(values: &[Value]) -> Vec<u8> {
    // 3.8: the count, N slot sizes, then the same data, formats, codes.
    let ours = Layout::encode(&refs(values)).unwrap();
    let layout = Layout::attach(&ours[..]).unwrap();
    let n = layout.len();
    let mut old = ours[..8].to_vec();
    for i in 0..n {
        old.extend((layout.slot(i).len() as i64).to_ne_bytes());
    }
    old.extend(&ours[layout.data_offset()..]);
    old
}

#[test]
fn recognises_python_38_lists() {
    let old = python38(&howdy_values());
    assert_eq!(old.len(), 183);
    assert_eq!(
        list_error(Layout::attach(&old[..])),
        ListError::Python38Layout
    );
    // Sizes whose sum overflows (found by the fuzzer) are not 3.8's.
    let mut huge = old.clone();
    for i in 1..=7 {
        huge[8 * i..8 * i + 8].copy_from_slice(&(i64::MAX & !7).to_ne_bytes());
    }
    assert!(matches!(
        list_error(Layout::attach(&huge[..])),
        ListError::Corrupt { .. }
    ));
    // 3.8's empty list is the count alone.
    assert_eq!(
        list_error(Layout::attach(&[0u8; 8][..])),
        ListError::Python38Layout
    );
}

fn with_word(mut bytes: Vec<u8>, at: usize, value: i64) -> Vec<u8> {
    bytes[at..at + 8].copy_from_slice(&value.to_ne_bytes());
    bytes
}

#[test]
fn refuses_bad_headers_and_offsets() {
    let good = unhex(HOWDY);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("short count", vec![0; 7]),
        ("count with no table", with_word(vec![0; 15], 0, 1)),
        ("negative count", with_word(good.clone(), 0, -1)),
        ("huge count", with_word(good.clone(), 0, i64::MAX)),
        ("count too big for the size", with_word(good.clone(), 0, 10)),
        ("first offset not 0", with_word(good.clone(), 8, 8)),
        ("decreasing", with_word(good.clone(), 24, 4 * 8)),
        ("not a multiple of 8", with_word(good.clone(), 24, 17)),
        ("negative offset", with_word(good.clone(), 16, -8)),
        ("data too big", with_word(good.clone(), 64, 64)),
        ("data huge", with_word(good.clone(), 64, i64::MAX & !7)),
        ("truncated", good[..190].to_vec()),
    ];
    for (what, bytes) in cases {
        match Layout::attach(&bytes[..]) {
            Err(Error::List(ListError::Corrupt { reason })) => {
                assert!(!reason.is_empty(), "{what}")
            }
            other => panic!("{what}: {other:?}"),
        }
    }
}

#[test]
fn refuses_bad_formats_and_codes_at_each_access() {
    let good = unhex(HOWDY);
    let layout = Layout::attach(&good[..]).unwrap();
    let fmt = |i: usize| layout.formats_offset() + 8 * i;
    let mut cases: Vec<(&str, Vec<u8>, usize)> = Vec::new();
    let mut set = |what, at: usize, data: &[u8], item| {
        let mut b = good.clone();
        b[at..at + data.len()].copy_from_slice(data);
        cases.push((what, b, item));
    };
    set("q with the None code", layout.codes_offset() + 3, &[3], 3);
    set("None with code 0", layout.codes_offset() + 4, &[0], 4);
    set("unknown code", layout.codes_offset(), &[9], 0);
    set("negative code", layout.codes_offset(), &[0xff], 0);
    set("width beyond the slot", fmt(0), b"9s", 0);
    set("16s in an 8-byte slot", fmt(1), b"16s\0", 1);
    set("garbage format", fmt(2), b"zzzzzzzz", 2);
    set("native-order prefix", fmt(3), b"@q\0", 3);
    set("NUL inside", fmt(0), b"8\0s\0", 0);
    set("empty format", fmt(6), &[0; 8], 6);
    set("sign in the width", fmt(0), b"+8s\0", 0);
    for (what, bytes, item) in cases {
        let layout = Layout::attach(&bytes[..]).unwrap();
        let i = item as isize;
        assert!(
            matches!(
                list_error(layout.get(&bytes[..], i)),
                ListError::BadItem { index, .. } if index == item
            ),
            "{what}"
        );
        assert!(layout.item_format(&bytes[..], i).is_err(), "{what}");
        assert!(layout.get_i64(&bytes[..], i).is_err(), "{what}");
        assert!(layout.get_f64(&bytes[..], i).is_err(), "{what}");
    }
}

#[test]
fn reads_formats_cpython_never_writes_but_struct_accepts() {
    let mut bytes = unhex(HOWDY);
    let f = Layout::attach(&bytes[..]).unwrap().formats_offset();
    bytes[f..f + 8].copy_from_slice(b"3s\0\0\0\0\0\0");
    bytes[f + 8..f + 16].copy_from_slice(b"08s\0\0\0\0\0");
    let layout = Layout::attach(&bytes[..]).unwrap();
    assert_eq!(layout.get(&bytes[..], 0).unwrap(), Value::from("how"));
    assert_eq!(layout.item_format(&bytes[..], 1).unwrap(), "08s");
    assert_eq!(
        layout.get(&bytes[..], 1).unwrap(),
        Value::from(&b"HoWdY"[..])
    );
}

#[test]
fn indexes_are_pythons_without_its_negative_bug() {
    let bytes = unhex(HOWDY);
    let layout = Layout::attach(&bytes[..]).unwrap();
    assert_eq!(layout.get(&bytes[..], -7).unwrap(), Value::from("howdy"));
    assert_eq!(layout.get(&bytes[..], -2).unwrap(), Value::Bool(true));
    for bad in [7, 8, -8, -9, -15, isize::MIN, isize::MAX] {
        assert_eq!(
            list_error(layout.get(&bytes[..], bad)),
            ListError::IndexOutOfRange { index: bad, len: 7 }
        );
    }
    let mut copy = bytes.clone();
    assert!(layout.set(&mut copy, -8, ValueRef::Int(1)).is_err());
    assert!(layout.set_i64(&mut copy, 7, 1).is_err());
    assert_eq!(copy, bytes);
}

#[test]
fn set_follows_cpython_type_changes() {
    let mut bytes = unhex(HOWDY);
    let layout = Layout::attach(&bytes[..]).unwrap();
    // CPython's test: a str replaces None, in its 8-byte slot.
    layout.set(&mut bytes, 4, ValueRef::Str("encodés")).unwrap();
    assert_eq!(layout.format(&bytes[..]).unwrap(), "8s8sdq8sxxxxxxx?q");
    assert_eq!(layout.get(&bytes[..], 4).unwrap(), Value::from("encodés"));
    // The reference's chain: a str into a float slot, None into an int's.
    layout
        .set(&mut bytes, 2, ValueRef::Str("abcdefgh"))
        .unwrap();
    layout.set(&mut bytes, 3, ValueRef::None).unwrap();
    assert_eq!(
        layout.format(&bytes[..]).unwrap(),
        "8s8s8sxxxxxx?x8sxxxxxxx?q"
    );
    assert_eq!(bytes[layout.codes_offset()..], [1, 2, 1, 3, 1, 0, 0]);
    layout
        .set(&mut bytes, 0, ValueRef::Bytes(b"\0\x01"))
        .unwrap();
    assert_eq!(
        layout.get(&bytes[..], 0).unwrap(),
        Value::from(&b"\0\x01"[..])
    );
    layout.set(&mut bytes, -1, ValueRef::Float(0.5)).unwrap();
    layout.set_f64(&mut bytes, 1, -0.0).unwrap();
    layout.set_i64(&mut bytes, 5, 5).unwrap();
    assert_eq!(layout.get(&bytes[..], 1).unwrap(), Value::Float(-0.0));
    assert_eq!(layout.get_i64(&bytes[..], 5).unwrap(), 5);
    assert_eq!(layout.get_f64(&bytes[..], -1).unwrap(), 0.5);
    layout.set(&mut bytes, 5, ValueRef::Bool(false)).unwrap();
    assert_eq!(layout.get(&bytes[..], 5).unwrap(), Value::Bool(false));
    assert_eq!(
        layout.format(&bytes[..]).unwrap(),
        "8sd8sxxxxxx?x8sxxxxxxx?d"
    );
}

#[test]
fn refused_writes_leave_the_item_intact() {
    let bytes = unhex(HOWDY);
    let layout = Layout::attach(&bytes[..]).unwrap();
    let mut copy = bytes.clone();
    let refused = [
        (0, ValueRef::Str("encodées")), // 9 bytes, 8 characters
        (1, ValueRef::Bytes(b"123456789")),
        (3, ValueRef::Str("x\0")),
        (0, ValueRef::Bytes(b"\0")),
    ];
    for (i, v) in refused {
        let e = list_error(layout.set(&mut copy, i, v));
        assert!(
            matches!(
                e,
                ListError::ExceedsStorage { .. } | ListError::TrailingNul { .. }
            ),
            "{e:?}"
        );
        assert_eq!(copy, bytes, "{v:?}");
    }
    assert!(
        list_error(layout.set(&mut copy, 0, ValueRef::Str("encodées")))
            .to_string()
            .contains("exceeds available storage")
    );
}

#[test]
fn a_short_write_stays_in_its_slot() {
    let values = [ValueRef::Str("0123456789abcdef"), ValueRef::Int(-1)];
    let mut bytes = Layout::encode(&values).unwrap();
    let layout = Layout::attach(&bytes[..]).unwrap();
    assert_eq!(layout.slot(0).len(), 24);
    layout.set(&mut bytes, 0, ValueRef::Str("é")).unwrap();
    assert_eq!(layout.get(&bytes[..], 0).unwrap(), Value::from("é"));
    assert_eq!(layout.get_i64(&bytes[..], 1).unwrap(), -1);
    // An 8-byte value in a 24-byte slot leaves the tail as it was (so
    // does CPython), and it is harmless.
    layout
        .set(&mut bytes, 0, ValueRef::Str("0123456789abcdefghijklmn"))
        .unwrap();
    layout.set_i64(&mut bytes, 0, 7).unwrap();
    assert_eq!(
        &bytes[layout.slot(0).start + 8..layout.slot(0).end],
        b"89abcdefghijklmn"
    );
    layout.set(&mut bytes, 0, ValueRef::Bytes(b"")).unwrap();
    assert_eq!(layout.item_format(&bytes[..], 0).unwrap(), "24s");
    assert_eq!(layout.get(&bytes[..], 0).unwrap(), Value::Bytes(vec![]));
}

#[test]
fn a_narrow_s_format_is_kept_when_it_fits_and_widened_when_not() {
    let values = [ValueRef::Str("0123456789")];
    let mut bytes = Layout::encode(&values).unwrap();
    let layout = Layout::attach(&bytes[..]).unwrap();
    let f = layout.formats_offset();
    bytes[f..f + 8].copy_from_slice(b"10s\0\0\0\0\0");
    layout.set(&mut bytes, 0, ValueRef::Str("abc")).unwrap();
    assert_eq!(layout.item_format(&bytes[..], 0).unwrap(), "10s");
    // CPython would keep "10s" and cut this to 10 bytes.
    layout
        .set(&mut bytes, 0, ValueRef::Str("abcdefghijkl"))
        .unwrap();
    assert_eq!(layout.item_format(&bytes[..], 0).unwrap(), "16s");
    assert_eq!(
        layout.get(&bytes[..], 0).unwrap(),
        Value::from("abcdefghijkl")
    );
}

#[test]
fn sizes_and_limits() {
    let slot = |v: ValueRef<'_>| Layout::for_values(&[v]).unwrap().slot(0).len();
    assert_eq!(slot(ValueRef::Str("")), 8);
    assert_eq!(slot(ValueRef::Str("1234567")), 8);
    assert_eq!(slot(ValueRef::Str("12345678")), 16);
    // CPython's slot by characters when the bytes fit it, else by bytes.
    assert_eq!(slot(ValueRef::Str("éééé")), 8); // 8 bytes fit exactly
    assert_eq!(slot(ValueRef::Str("encodés")), 8);
    assert_eq!(slot(ValueRef::Str("ééééé")), 16); // 10 bytes
    let max = vec![b'a'; MAX_ITEM_BYTES];
    assert_eq!(slot(ValueRef::Bytes(&max)), 9_999_992);
    let bytes = Layout::encode(&[ValueRef::Bytes(&max)]).unwrap();
    let layout = Layout::attach(&bytes[..]).unwrap();
    assert_eq!(layout.item_format(&bytes[..], 0).unwrap(), "9999992s");
    let over = vec![b'a'; MAX_ITEM_BYTES + 1];
    assert_eq!(
        list_error(Layout::for_values(&[
            ValueRef::Int(0),
            ValueRef::Bytes(&over)
        ])),
        ListError::TooLong {
            index: 1,
            len: 9_999_992
        }
    );
    assert_eq!(
        list_error(Layout::for_values(&[ValueRef::Str("a\0")])),
        ListError::TrailingNul {
            index: 0,
            type_name: "str"
        }
    );
    assert!(Layout::for_values(&[ValueRef::Str("\0a")]).is_ok());
}

#[test]
fn write_new_refuses_values_that_do_not_match() {
    let layout = Layout::for_values(&[ValueRef::Str("abc")]).unwrap();
    let mut bytes = vec![0u8; layout.size()];
    assert!(layout.write_new(&mut bytes, &[]).is_err());
    assert!(layout
        .write_new(&mut bytes, &[ValueRef::Str("12345678")])
        .is_err());
    assert!(layout
        .write_new(&mut bytes[..10], &[ValueRef::Str("abc")])
        .is_err());
}

pub(super) fn any_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::Int),
        any::<f64>().prop_map(Value::Float),
        any::<bool>().prop_map(Value::Bool),
        Just(Value::None),
        ".{0,20}".prop_map(|s: String| Value::Str(s.trim_end_matches('\0').to_owned())),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(|mut b| {
            while b.last() == Some(&0) {
                b.pop();
            }
            Value::Bytes(b)
        }),
    ]
}

/// Equal, with floats compared bit for bit (NaN, -0.0).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(x), Value::Float(y)) => x.to_bits() == y.to_bits(),
        _ => a == b,
    }
}

proptest! {
    #[test]
    fn round_trips(values in proptest::collection::vec(any_value(), 0..30)) {
        let bytes = Layout::encode(&refs(&values)).unwrap();
        let layout = Layout::attach(&bytes[..]).unwrap();
        prop_assert_eq!(layout.size(), bytes.len());
        prop_assert_eq!(layout.len(), values.len());
        for (i, v) in values.iter().enumerate() {
            let got = layout.get(&bytes[..], i as isize).unwrap();
            prop_assert!(same(&got, v), "{:?} != {:?}", got, v);
            let slot = layout.slot(i).len();
            prop_assert!(slot % 8 == 0 && slot >= 8);
        }
    }

    #[test]
    fn sets_match_a_model(
        initial in proptest::collection::vec(any_value(), 1..12),
        writes in proptest::collection::vec((any::<isize>(), any_value()), 0..30),
    ) {
        let mut bytes = Layout::encode(&refs(&initial)).unwrap();
        let layout = Layout::attach(&bytes[..]).unwrap();
        let mut model = initial.clone();
        for (index, v) in writes {
            let index = index % (model.len() as isize + 2);
            let before = bytes.clone();
            match layout.set(&mut bytes, index, v.as_ref()) {
                Ok(()) => {
                    let i = layout.index(index).unwrap();
                    model[i] = v;
                }
                Err(_) => prop_assert_eq!(&bytes, &before),
            }
            for (i, m) in model.iter().enumerate() {
                let got = layout.get(&bytes[..], i as isize).unwrap();
                prop_assert!(same(&got, m), "{:?} != {:?}", got, m);
            }
        }
        prop_assert_eq!(Layout::attach(&bytes[..]).unwrap(), layout);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        exercise(&bytes);
    }

    #[test]
    fn damaged_lists_never_panic(
        values in proptest::collection::vec(any_value(), 0..10),
        damage in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
    ) {
        let mut bytes = Layout::encode(&refs(&values)).unwrap();
        for (at, b) in damage {
            let at = at % bytes.len();
            bytes[at] = b;
        }
        exercise(&bytes);
    }
}

/// Everything a reader can do, on any bytes.
fn exercise(bytes: &[u8]) {
    if let Ok(layout) = Layout::attach(bytes) {
        assert!(layout.size() <= bytes.len());
        let _ = layout.format(bytes);
        let mut copy = bytes.to_vec();
        for i in 0..layout.len() as isize {
            let _ = layout.get(bytes, i);
            let _ = layout.get_i64(bytes, i);
            let _ = layout.get_f64(bytes, i);
            let _ = layout.set(&mut copy, i, ValueRef::Str("abc"));
            let _ = layout.set_i64(&mut copy, -1 - i, i as i64);
        }
    }
}
