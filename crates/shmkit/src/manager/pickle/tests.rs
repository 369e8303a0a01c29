use super::opcodes::*;
use super::*;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn t(items: Vec<PyValue>) -> PyValue {
    PyValue::Tuple(items)
}

fn request(func: &str, args: Vec<PyValue>) -> PyValue {
    t(vec![
        PyValue::None,
        func.into(),
        t(args),
        PyValue::Dict(vec![]),
    ])
}

/// The frames of the spec's §4.7 transcript, captured from CPython 3.11.
#[test]
fn matches_cpython_transcripts_byte_for_byte() {
    let cases = [
        (
            request("track_segment", vec!["psm_abc".into()]),
            "80049523000000000000\
             00284e8c0d747261636b5f7365676d656e74948c0770736d5f61626394859\
             47d9474942e",
        ),
        (
            request("dummy", vec![]),
            "8004951000000000000000284e8c0564756d6d7994297d9474942e",
        ),
        (
            request("shutdown", vec![]),
            "8004951300000000000000284e8c0873687574646f776e94297d9474942e",
        ),
        (
            t(vec!["#RETURN".into(), PyValue::None]),
            "8004950e000000000000008c072352455455524e944e86942e",
        ),
        (
            t(vec![
                "#RETURN".into(),
                PyValue::List(vec!["psm_abc".into()]),
            ]),
            "8004951a000000000000008c072352455455524e945d948c0770736d5f616263946186942e",
        ),
    ];
    for (value, expected) in cases {
        let expected: String = expected.split_whitespace().collect();
        assert_eq!(hex(&dumps(&value)), expected, "{value}");
        assert_eq!(loads(&unhex(&expected)).unwrap(), value);
    }
}

/// `pickle.dumps(x, 4).hex()` on CPython 3.11, for each type and size
/// class of the writer.
#[test]
fn matches_cpython_for_each_type() {
    let ab = || PyValue::Dict(vec![("a".into(), 1.into()), ("b".into(), 2.into())]);
    let cases: Vec<(PyValue, &str)> = vec![
        (PyValue::None, "80044e2e"),
        (PyValue::Bool(true), "8004882e"),
        (PyValue::Int(0), "80044b002e"),
        (PyValue::Int(-1), "80049506000000000000004affffffff2e"),
        (PyValue::Int(-129), "80049506000000000000004a7fffffff2e"),
        (PyValue::Int(300), "80049504000000000000004d2c012e"),
        (
            PyValue::Int(1 << 40),
            "80049509000000000000008a060000000000012e",
        ),
        (
            PyValue::Int(i64::MIN),
            "8004950b000000000000008a0800000000000000802e",
        ),
        (
            PyValue::Int(i64::MAX),
            "8004950b000000000000008a08ffffffffffffff7f2e",
        ),
        (
            PyValue::Float(1.5),
            "8004950a00000000000000473ff80000000000002e",
        ),
        (
            PyValue::Str(String::new()),
            "80049504000000000000008c00942e",
        ),
        (
            PyValue::Bytes(b"ab".to_vec()),
            "800495060000000000000043026162942e",
        ),
        (PyValue::Tuple(vec![]), "8004292e"),
        (PyValue::List(vec![]), "80045d942e"),
        (PyValue::Dict(vec![]), "80047d942e"),
        (
            ab(),
            "80049511000000000000007d94288c0161944b018c0162944b02752e",
        ),
        (
            t((1..=4).map(PyValue::Int).collect()),
            "8004950c00000000000000284b014b024b034b0474942e",
        ),
        (
            PyValue::List(vec![1.into(), 2.into()]),
            "80049509000000000000005d94284b014b02652e",
        ),
    ];
    for (value, expected) in cases {
        assert_eq!(hex(&dumps(&value)), expected, "{value}");
        assert_eq!(loads(&unhex(expected)).unwrap(), value);
    }
    // 'é'*200: 400 UTF-8 bytes, so BINUNICODE with a 4-byte length.
    let long = PyValue::Str("é".repeat(200));
    let expected = format!("80049597010000000000005890010000{}942e", "c3a9".repeat(200));
    assert_eq!(hex(&dumps(&long)), expected);
}

#[test]
fn round_trips_every_type_and_size() {
    let long = "é".repeat(200);
    let value = PyValue::List(vec![
        PyValue::None,
        PyValue::Bool(false),
        PyValue::Int(i64::MAX),
        PyValue::Int(-129),
        PyValue::Int(65536),
        PyValue::Float(f64::NEG_INFINITY),
        PyValue::Str(long.clone()),
        PyValue::Bytes(vec![7; 70_000]),
        PyValue::Tuple((0..5).map(PyValue::Int).collect()),
        PyValue::List((0..2500).map(PyValue::Int).collect()),
        PyValue::Dict(
            (0..1001)
                .map(|i| (PyValue::Int(i), long.as_str().into()))
                .collect(),
        ),
    ]);
    assert_eq!(loads(&dumps(&value)).unwrap(), value);
}

#[test]
fn memo_shares_lists_as_python_does() {
    // l = [1, 2]; pickle.dumps((l, l), 4) on CPython 3.11: the list is
    // memoized empty, filled by APPENDS, then fetched again with BINGET,
    // which must see the items appended after the MEMOIZE.
    let data = b"\x80\x04\x95\r\x00\x00\x00\x00\x00\x00\x00]\x94(K\x01K\x02eh\x00\x86\x94.";
    let l = PyValue::List(vec![PyValue::Int(1), PyValue::Int(2)]);
    assert_eq!(loads(data).unwrap(), t(vec![l.clone(), l]));
    // The same with APPEND after the first use was pushed.
    let data = b"\x80\x04]\x94K\x01ah\x00\x86.";
    let one = PyValue::List(vec![PyValue::Int(1)]);
    assert_eq!(loads(data).unwrap(), t(vec![one.clone(), one]));
}

#[test]
fn refuses_bad_pickles_with_the_right_problem() {
    let cases: &[(&[u8], PickleProblem)] = &[
        (b"", PickleProblem::Truncated),
        (b"\x80\x04N", PickleProblem::Truncated),
        (b"\x80\x06N.", PickleProblem::UnsupportedProtocol(6)),
        (
            b"\x80\x04cos\nsystem\n.",
            PickleProblem::UnsupportedOpcode { opcode: b'c' },
        ),
        (
            b"\x80\x04R.",
            PickleProblem::UnsupportedOpcode { opcode: b'R' },
        ),
        (b".", PickleProblem::StackUnderflow),
        (b"(.", PickleProblem::MarkAtStop),
        (b"Nt.", PickleProblem::NoMark),
        (b"h\x05.", PickleProblem::MissingMemo(5)),
        (b"Na.", PickleProblem::StackUnderflow),
        (
            b"NNa.",
            PickleProblem::WrongTarget {
                opcode: "APPEND",
                found: "NoneType",
            },
        ),
        (b"}(Nu.", PickleProblem::OddItems),
        (b"}]Ns.", PickleProblem::Unhashable("list")),
        (b"\x8c\x02\xff\xfe.", PickleProblem::InvalidUtf8),
        (b"X\xff\xff\xff\xffab.", PickleProblem::Truncated),
        (
            b"\x8e\xff\xff\xff\xff\xff\xff\xff\xff.",
            PickleProblem::Truncated,
        ),
        (
            b"\x95\xff\x00\x00\x00\x00\x00\x00\x00N.",
            PickleProblem::BadFrame(255),
        ),
        (
            b"\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x01.",
            PickleProblem::IntTooLarge { bytes: 9 },
        ),
        (b"\x8b\xff\xff\xff\xff.", PickleProblem::NegativeLength),
        (b"]\x94h\x00a.", PickleProblem::Recursive),
        // N inside a mark: pops may not reach below it.
        (b"N(\x85.", PickleProblem::StackUnderflow),
    ];
    for (data, want) in cases {
        match loads(data) {
            Err(e) => assert_eq!(&e.problem, want, "{}", hex(data)),
            Ok(v) => panic!("{} loaded as {v}", hex(data)),
        }
    }
}

#[test]
fn longs_beyond_eight_bytes_that_fit_are_read() {
    // -1 in 9 bytes, 2**63-1 in 9 bytes (with a 0 sign byte).
    assert_eq!(
        loads(b"\x8a\x09\xff\xff\xff\xff\xff\xff\xff\xff\xff.").unwrap(),
        PyValue::Int(-1)
    );
    assert_eq!(
        loads(b"\x8a\x09\xff\xff\xff\xff\xff\xff\xff\x7f\x00.").unwrap(),
        PyValue::Int(i64::MAX)
    );
    // 2**63 needs 9 bytes and does not fit.
    assert!(loads(b"\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x80\x00.").is_err());
    assert_eq!(loads(b"\x8a\x00.").unwrap(), PyValue::Int(0));
}

#[test]
fn billion_laughs_are_refused() {
    // l0 = [], then l(i+1) = [li, li] memoized: 2**40 leaves from ~200 bytes.
    let mut data = b"\x80\x04]\x94".to_vec();
    for i in 0..40u8 {
        data.extend_from_slice(&[b']', 0x94, b'(', b'h', i, b'h', i, b'e']);
    }
    data.push(b'.');
    assert_eq!(loads(&data).unwrap_err().problem, PickleProblem::TooLarge);
}

/// Opcodes of a byte or two that each build a value: a list of `None`s,
/// a chain of one-item tuples, a list of one shared empty list. Each
/// would cost many times its size; the budget refuses them.
#[test]
fn cheap_opcodes_that_build_values_are_refused() {
    let n = 1 << 20;
    let mut nones = b"\x80\x04](".to_vec();
    nones.extend(std::iter::repeat_n(b'N', n));
    nones.extend_from_slice(b"e.");
    let mut chain = b"\x80\x04N".to_vec();
    chain.extend(std::iter::repeat_n(TUPLE1, n));
    chain.push(b'.');
    let mut shared = b"\x80\x04]\x94](".to_vec();
    for _ in 0..n / 2 {
        shared.extend_from_slice(b"h\x00");
    }
    shared.extend_from_slice(b"e.");
    let mut dict = b"\x80\x04}(".to_vec();
    for _ in 0..n / 2 {
        dict.extend_from_slice(b"NN");
    }
    dict.extend_from_slice(b"u.");
    for data in [&nones, &chain, &shared, &dict] {
        assert_eq!(loads(data).unwrap_err().problem, PickleProblem::TooLarge);
    }
    // A short one of each still loads.
    let mut few = b"\x80\x04](".to_vec();
    few.extend(std::iter::repeat_n(b'N', 100));
    few.extend_from_slice(b"e.");
    assert_eq!(loads(&few).unwrap().as_sequence().unwrap().len(), 100);
}

/// What the protocol really carries in bulk, `list_segments`'s reply
/// for a manager with many segments, fits the budget.
#[test]
fn a_long_list_of_names_fits_the_budget() {
    for count in [1000usize, 100_000] {
        let names = (0..count)
            .map(|i| PyValue::Str(format!("psm_{i:08x}")))
            .collect();
        let reply = t(vec!["#RETURN".into(), PyValue::List(names)]);
        assert_eq!(loads(&dumps(&reply)).unwrap(), reply);
    }
}

#[test]
fn deep_nesting_is_refused_without_overflowing_the_stack() {
    let mut data = vec![b']'; 1000];
    data.extend(std::iter::repeat_n(b'a', 999));
    data.push(b'.');
    assert_eq!(loads(&data).unwrap_err().problem, PickleProblem::TooDeep);
    // Deeper still, the budget refuses it before the depth is known.
    let mut data = vec![b']'; 100_000];
    data.extend(std::iter::repeat_n(b'a', 99_999));
    data.push(b'.');
    assert!(matches!(
        loads(&data).unwrap_err().problem,
        PickleProblem::TooDeep | PickleProblem::TooLarge
    ));
    let mut ok = vec![b']'; 50];
    ok.extend(std::iter::repeat_n(b'a', 49));
    ok.push(b'.');
    assert!(loads(&ok).is_ok());
}

#[test]
fn reprs_look_like_pythons() {
    let v = t(vec![
        PyValue::None,
        "it's".into(),
        "a\n\\".into(),
        PyValue::Bytes(b"\x00'a".to_vec()),
        PyValue::Float(1.0),
        PyValue::Float(1e100),
        PyValue::Tuple(vec![PyValue::Int(1)]),
        PyValue::Dict(vec![("k".into(), PyValue::List(vec![]))]),
    ]);
    assert_eq!(
        v.repr(),
        r#"(None, "it's", 'a\n\\', b"\x00'a", 1.0, 1e+100, (1,), {'k': []})"#
    );
}
