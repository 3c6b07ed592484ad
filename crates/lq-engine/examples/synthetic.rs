//! Writes a model file with random weights in a network's shape, for timing the engine without a trained
//! checkpoint: `cargo run --release -p lq-engine --example synthetic -- resnet20-A|resnet20-B|vgg-small W A OUT.lqm`,
//! then `--example latency -- OUT.lqm` or `lqnets bench infer --model OUT.lqm`.
#[path = "../tests/common/mod.rs"]
mod common;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [net, kw, ka, out] = &args[..] else {
        return Err("usage: synthetic resnet20-A|resnet20-B|vgg-small W A OUT.lqm".into());
    };
    let (kw, ka) = (kw.parse()?, ka.parse()?);
    let (mut f, desc) = match net.as_str() {
        "resnet20-A" => {
            (common::resnet_cifar(20, 'A', kw, ka, 32, 1), r#"{"arch":"resnet_cifar","depth":20,"shortcut":"A"}"#)
        }
        "resnet20-B" => {
            (common::resnet_cifar(20, 'B', kw, ka, 32, 1), r#"{"arch":"resnet_cifar","depth":20,"shortcut":"B"}"#)
        }
        "vgg-small" => (common::vgg_small([128, 128, 256, 256, 512, 512], kw, ka, 1), r#"{"arch":"vgg_small"}"#),
        n => return Err(format!("unknown network {n}").into()),
    };
    // The description lqnets' export writes, so `lqnets bench infer` builds the same network on libtorch.
    f.meta.as_mut().expect("finish() sets the metadata").model = desc.into();
    f.save(out.as_ref())?;
    Ok(())
}
