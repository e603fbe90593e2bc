//! Scratch check of the client against a running hregd:
//! `cargo run -p hreg --example smoke -- /tmp/x.sock`.

use hreg::{Client, Completion, Error, Handle, Op};

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/tmp/x.sock".into());
    let client = Client::connect(&path)?;
    let w = client.welcome();
    println!("session {} welcome {w:?}", client.session_id());
    let max = client.max_value_size();

    // Sizes around every boundary: inline, data area, staged.
    let data = w.data_size as usize;
    for len in [
        0,
        1,
        32,
        33,
        100,
        data - 1,
        data,
        data + 1,
        3 * data + 7,
        max,
    ] {
        let v = pattern(len, len as u8);
        let h = client.insert(&v, 0)?;
        assert_eq!(client.get(h)?, v, "get of {len}");
        let mut buf = vec![0u8; len];
        assert_eq!(client.get_into(h, &mut buf)?, len);
        assert_eq!(buf, v);
        match client.get_into(h, &mut []) {
            Ok(0) if len == 0 => {}
            Err(Error::Buffer { needed }) if needed == len => {}
            other => panic!("probe of {len}: {other:?}"),
        }
        if len > 0 {
            let mut small = vec![0u8; len - 1];
            assert!(
                matches!(client.get_into(h, &mut small), Err(Error::Buffer { needed }) if needed == len)
            );
        }
        let v2 = pattern(len, 99);
        client.replace(h, &v2)?;
        assert_eq!(client.get(h)?, v2);
        client.release(h)?;
        assert!(
            matches!(client.get(h), Err(Error::Stale)),
            "after release {len}"
        );
        println!("ok len {len}");
    }
    assert!(matches!(
        client.insert(&vec![0; max + 1], 0),
        Err(Error::TooBig { .. })
    ));
    assert!(matches!(
        client.insert(&vec![0; max + 1], 0x80),
        Err(Error::Invalid)
    ));
    let made_up = Handle::new(12345).unwrap();
    assert!(matches!(client.get(made_up), Err(Error::Stale)));

    // Detached: no reference.
    let d = client.insert(b"detached", hreg::DETACHED | hreg::SHARED)?;
    assert!(matches!(client.release(d), Err(Error::NotHeld)));
    client.retain(d)?;
    client.release(d)?;
    client.remove(d)?;
    assert!(matches!(client.release(d), Err(Error::Stale)));

    // A batch mixing everything, larger than the SQ.
    let values: Vec<Vec<u8>> = (0..600)
        .map(|i| pattern([3, 40, 1000, data + 5, 2 * data][i % 5], i as u8))
        .collect();
    let mut ops: Vec<Op> = values
        .iter()
        .map(|v| Op::Insert { value: v, flags: 0 })
        .collect();
    let results = client.submit(&mut ops)?;
    let handles: Vec<Handle> = results
        .into_iter()
        .map(|r| match r {
            Ok(Completion::Inserted(h)) => h,
            other => panic!("{other:?}"),
        })
        .collect();
    let mut bufs: Vec<Vec<u8>> = values.iter().map(|v| vec![0u8; v.len()]).collect();
    let mut ops: Vec<Op> = Vec::new();
    for (i, (h, buf)) in handles.iter().zip(bufs.iter_mut()).enumerate() {
        if i % 2 == 0 {
            ops.push(Op::Get { handle: *h, buf });
        } else {
            ops.push(Op::GetOwned { handle: *h });
        }
        ops.push(Op::Release(*h));
        ops.push(Op::Release(*h));
    }
    let results = client.submit(&mut ops)?;
    drop(ops);
    for (i, chunk) in results.chunks(3).enumerate() {
        match &chunk[0] {
            Ok(Completion::Length(n)) => assert_eq!(*n, values[i].len()),
            Ok(Completion::Value(v)) => assert_eq!(v, &values[i]),
            other => panic!("{i}: {other:?}"),
        }
        assert!(matches!(chunk[1], Ok(Completion::Done)));
        assert!(matches!(chunk[2], Err(Error::Stale)), "{i}: {:?}", chunk[2]);
    }
    for (i, buf) in bufs.iter().enumerate() {
        if i % 2 == 0 {
            assert_eq!(buf, &values[i]);
        }
    }
    println!("batch ok");

    // Threads, each with its own ring (more than max_rings to hit sharing).
    let threads = w.max_rings as usize + 4;
    std::thread::scope(|s| {
        for t in 0..threads {
            let client = client.clone();
            s.spawn(move || {
                for i in 0..200 {
                    let v = pattern((i * 37 + t) % (3 * data), t as u8);
                    let h = client.insert(&v, 0).unwrap();
                    assert_eq!(client.get(h).unwrap(), v);
                    client.release(h).unwrap();
                }
            });
        }
    });
    println!("threads ok");
    println!("{:?}", client.stats()?);
    Ok(())
}
