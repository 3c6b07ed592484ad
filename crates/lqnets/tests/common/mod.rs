//! Files the CLI tests generate.

/// A CIFAR-10-layout folder of `n` records per training batch and `n` test records: 10 classes, each a fixed
/// pattern plus noise.
pub fn cifar_folder(dir: &std::path::Path, n: usize) {
    let mut s = 7u64;
    let mut rnd = move || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (s >> 33) as u8
    };
    let protos: Vec<Vec<u8>> = (0..10).map(|_| (0..3072).map(|_| rnd()).collect()).collect();
    let mut file = |name: &str| {
        let mut b = Vec::new();
        for i in 0..n {
            b.push((i % 10) as u8);
            b.extend(protos[i % 10].iter().map(|&p| p.saturating_add(rnd() % 24)));
        }
        std::fs::write(dir.join(name), b).unwrap();
    };
    (1..=5).for_each(|i| file(&format!("data_batch_{i}.bin")));
    file("test_batch.bin");
}
