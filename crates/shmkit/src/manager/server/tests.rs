use super::pool::*;
use super::requests::*;
use super::*;
use crate::manager::frame;
use crate::manager::pickle::PyValue;

fn req(func: &str, args: Vec<PyValue>, kwds: Vec<(PyValue, PyValue)>) -> PyValue {
    PyValue::Tuple(vec![
        PyValue::None,
        func.into(),
        PyValue::Tuple(args),
        PyValue::Dict(kwds),
    ])
}

fn run(shared: &Shared, request: &PyValue) -> std::result::Result<PyValue, String> {
    let (func, args, kwds) = parse_request(request)?;
    call(shared, func, args, kwds)
}

fn shared() -> Shared {
    Shared {
        state: Mutex::new(State::default()),
        stop: sys::event().unwrap(),
        active: (Mutex::new(0), Condvar::new()),
        requests: Pool::for_requests_up_to(frame::DEFAULT_MAX_LEN),
    }
}

#[test]
fn the_request_pool_is_shared_and_waits() {
    let pool = Pool::for_requests_up_to(frame::DEFAULT_MAX_LEN);
    assert!(pool.size >= request_cost(frame::DEFAULT_MAX_LEN));
    let all = pool.take(pool.size, None).unwrap();
    assert!(pool.take(1, Some(Duration::from_millis(20))).is_none());
    std::thread::scope(|scope| {
        let waiter = scope.spawn(|| pool.take(1, Some(Duration::from_secs(5))).is_some());
        std::thread::sleep(Duration::from_millis(20));
        drop(all);
        assert!(waiter.join().unwrap());
    });
    assert_eq!(*pool.used.lock().unwrap(), 0);
}

#[test]
fn requests_get_cpythons_answers_and_errors() {
    let s = shared();
    let none = Ok(PyValue::None);
    assert_eq!(run(&s, &req("dummy", vec![], vec![])), none);
    assert_eq!(run(&s, &req("debug_info", vec![], vec![])), Ok("".into()));
    assert_eq!(
        run(&s, &req("number_of_objects", vec![], vec![])),
        Ok(0.into())
    );
    assert_eq!(
        run(&s, &req("track_segment", vec!["a".into()], vec![])),
        none
    );
    assert_eq!(
        run(
            &s,
            &req(
                "track_segment",
                vec![],
                vec![("segment_name".into(), "a".into())]
            )
        ),
        none
    );
    assert_eq!(
        run(&s, &req("list_segments", vec![], vec![])),
        Ok(PyValue::List(vec!["a".into(), "a".into()]))
    );
    let err = |r: std::result::Result<PyValue, String>| r.unwrap_err();
    assert_eq!(
        err(run(&s, &req("nope", vec![], vec![]))),
        "AssertionError: 'nope' unrecognized"
    );
    assert_eq!(
        err(run(&s, &req("track_segment", vec![], vec![]))),
        "TypeError: SharedMemoryServer.track_segment() missing 1 required positional argument: 'segment_name'"
    );
    assert_eq!(
        err(run(&s, &req("dummy", vec![1.into()], vec![]))),
        "TypeError: Server.dummy() takes 2 positional arguments but 3 were given"
    );
    assert_eq!(
        err(run(&s, &req("dummy", vec![], vec![("x".into(), 1.into())]))),
        "TypeError: Server.dummy() got an unexpected keyword argument 'x'"
    );
    assert_eq!(
        err(run(
            &s,
            &req("track_segment", vec!["b".into()], vec![("segment_name".into(), "b".into())])
        )),
        "TypeError: SharedMemoryServer.track_segment() got multiple values for argument 'segment_name'"
    );
    assert_eq!(
        err(run(&s, &req("track_segment", vec![1.into()], vec![]))),
        "TypeError: a segment name must be str, not int"
    );
    assert!(
        err(run(&s, &req("track_segment", vec!["a/b".into()], vec![])))
            .starts_with("OSError: [Errno 22] Invalid argument: '/a/b'")
    );
    assert_eq!(
        err(run(
            &s,
            &req("create", vec!["Foo".into(), 1.into()], vec![])
        )),
        "KeyError: 'Foo'"
    );
    assert_eq!(
        err(run(&s, &PyValue::Tuple(vec![PyValue::None]))),
        "ValueError: not enough values to unpack (expected 4, got 1)"
    );
    assert_eq!(
        err(run(&s, &PyValue::Int(1))),
        "TypeError: cannot unpack non-iterable int object"
    );
    assert_eq!(
        err(run(&s, &req("release_segment", vec!["zzz".into()], vec![]))),
        "ValueError: list.remove(x): x not in list"
    );
    // Released though already gone: the name is dropped, the error told.
    let gone = format!("shmkit_server_unit_{}", std::process::id());
    run(
        &s,
        &req("track_segment", vec![gone.as_str().into()], vec![]),
    )
    .unwrap();
    assert_eq!(
        err(run(
            &s,
            &req("release_segment", vec![gone.as_str().into()], vec![])
        )),
        format!("FileNotFoundError: [Errno 2] No such file or directory: '/{gone}'")
    );
    assert_eq!(
        run(&s, &req("list_segments", vec![], vec![])),
        Ok(PyValue::List(vec!["a".into(), "a".into()]))
    );
    // After shutdown, nothing more is tracked.
    assert_eq!(run(&s, &req("shutdown", vec![], vec![])), none);
    assert!(
        err(run(&s, &req("track_segment", vec!["c".into()], vec![]))).starts_with("RuntimeError")
    );
    assert_eq!(
        run(&s, &req("list_segments", vec![], vec![])),
        Ok(PyValue::List(vec![]))
    );
}
