//! VM figures (`--vm`): the whole `wisp vm run --image tiny -- true` process. The bare-QEMU
//! boot reference of issue 4 is not measured yet (see docs/PERFORMANCE.md).

use anyhow::{bail, Result};

use crate::report::Row;
use crate::wisp::Wisp;
use crate::{median, Ctx};

const SECTION: &str = "vm";
const SAMPLES: usize = 3;

pub fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let dir = ctx.scratch("vm")?;
    let wisp = Wisp::new(&ctx.wisp, &dir.join("home"))?;
    if wisp.run(&["vm", "run", "--help"]).is_err() {
        bail!("this wisp has no `wisp vm run` yet");
    }
    // The first run builds the image and fetches the kernel; it is not a sample.
    let first = wisp.timed(&["vm", "run", "--image", "tiny", "--", "true"])?;
    let mut samples = Vec::new();
    for _ in 0..SAMPLES {
        samples.push(wisp.timed(&["vm", "run", "--image", "tiny", "--", "true"])?);
    }
    Ok(vec![
        Row::info(
            SECTION,
            "wisp vm run --image tiny -- true",
            median(samples).as_secs_f64(),
            "s",
        )
        .with_note(format!(
            "median of {SAMPLES}, whole process; no bare-QEMU reference yet"
        )),
        Row::info(
            SECTION,
            "first run (builds image, fetches kernel)",
            first.as_secs_f64(),
            "s",
        ),
    ])
}
