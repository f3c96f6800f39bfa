//! An ensemble of random-weight members of any architecture, for benchmarks that need the paper's
//! full-size networks without trained weights (e.g. `scripts/bench-serve.sh`).
//!
//! cargo run --release --example random_ensemble -- ARCH MEMBERS OUT_DIR
//! writes OUT_DIR/ensemble.json and the members (continuous head, the paper's input).

use std::path::PathBuf;

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use ctgrade::ensemble::{self, Manifest};
use ctgrade::grading::Head;
use ctgrade::model::{self, Arch, NetworkConfig};
use ctgrade::preprocess::InputSpec;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [arch, members, out] = &args[..] else {
        anyhow::bail!("usage: random_ensemble ARCH MEMBERS OUT_DIR");
    };
    let arch: Arch = arch.parse().map_err(anyhow::Error::msg)?;
    let members: usize = members.parse()?;
    let out = PathBuf::from(out);
    let network = NetworkConfig::new(arch, 3, Head::Continuous.num_outputs());
    let scratch = tempfile::tempdir()?;
    let files = (0..members)
        .map(|i| {
            let varmap = VarMap::new();
            let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
            model::build(&network, vb)?;
            let path = scratch.path().join(format!("member-{i}.safetensors"));
            varmap.save(&path)?;
            Ok(path)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let manifest = Manifest {
        name: format!("random-{arch}-x{members}"),
        description: "random weights, for benchmarks only".into(),
        demonstration: false,
        network,
        head: Head::Continuous,
        input: InputSpec::default(),
        members: Vec::new(),
        lesion_model: None,
        lobe_model: None,
    };
    ensemble::create(&out, manifest, &files)?;
    eprintln!("wrote {} members to {}", members, out.display());
    Ok(())
}
