//! `lqnets data check` and `lqnets bench data`: an image-folder dataset (ImageNet layout) walked and timed.
use anyhow::{bail, Result};
use clap::Args;
use lq_data::{ImageFolder, Split, Transform};
use lq_train::config::{Augment, DatasetKind};
use lq_train::TrainConfig;
use std::path::{Path, PathBuf};

/// Arguments of `lqnets data check` and `lqnets bench data`.
#[derive(Args, Debug)]
pub struct DataArgs {
    /// TOML config whose `[data]` names an image folder (`dataset = "imagenet"`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a config value (repeatable), e.g. `--set data.dir="/data/imagenet"`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Worker threads (check: decoding threads; bench: the largest count timed, from 1 up in powers of 2).
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Images decoded per bench measurement.
    #[arg(long, default_value_t = 400)]
    images: usize,
}

fn folder(a: &DataArgs, split: Split) -> Result<(TrainConfig, ImageFolder)> {
    let cfg = TrainConfig::load(a.config.as_deref(), &a.sets)?;
    if cfg.data.dataset != DatasetKind::Imagenet {
        bail!("data.dataset = {:?}: these commands walk image folders (imagenet)", cfg.data.dataset);
    }
    let f = ImageFolder::open(Path::new(&cfg.data.dir), split)?;
    Ok((cfg, f))
}

/// Runs `lqnets data check`: both splits, every file decoded once.
pub fn check(a: &DataArgs) -> Result<()> {
    for split in [Split::Train, Split::Val] {
        let (cfg, f) = folder(a, split)?;
        println!("{}/{split:?}:", cfg.data.dir);
        print!("{}", lq_data::check(&f, a.workers.max(1)));
    }
    Ok(())
}

/// Runs `lqnets bench data`: decode + the training augmentation of the config, per stage and per worker count.
pub fn bench(a: &DataArgs) -> Result<()> {
    let (cfg, f) = folder(a, Split::Train)?;
    let tf = match cfg.data.augment {
        Augment::Fb => Transform::fb(cfg.data.size),
        Augment::Hwgq => Transform::hwgq(cfg.data.size),
    };
    let workers: Vec<usize> =
        std::iter::successors(Some(1), |w| Some(w * 2)).take_while(|&w| w <= a.workers.max(1)).collect();
    print!("{}", lq_data::bench(&f, tf, a.images, &workers));
    Ok(())
}
