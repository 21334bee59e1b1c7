//! Fuzz target: CAR v1 parsing, block lookup, and MST reading from the first root.
#![no_main]

use fpaas_proto::car::Car;
use fpaas_proto::mst;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(car) = Car::parse(data) {
        for (cid, _bytes) in car.iter() {
            // Every listed block must be found again by its CID.
            assert!(car.get(cid).is_some());
        }
        if let Some(root) = car.roots.first() {
            if let Ok(commit) = mst::read_commit(&car, root) {
                let _ = mst::walk(&car, &commit.data);
            }
            let _ = mst::walk(&car, root);
        }
    }
});
