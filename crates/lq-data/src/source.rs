//! Streaming image sources: a labelled list of images decoded on demand.
use crate::dataset::Dataset;
use crate::error::{Error, Result};
use crate::image::{read_image, Image};
use std::path::{Path, PathBuf};

/// Labelled images loaded one at a time (by worker threads, hence `Send + Sync`).
pub trait Source: Send + Sync {
    /// Number of images.
    fn len(&self) -> usize;
    /// True when there are no images.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Class of image `i`.
    fn label(&self, i: usize) -> u16;
    /// Number of classes.
    fn classes(&self) -> usize;
    /// Image `i`, decoded; an error names the file and what is wrong with it.
    fn load(&self, i: usize) -> Result<Image>;
    /// What names image `i` in messages (its file, or its index).
    fn path(&self, i: usize) -> PathBuf {
        PathBuf::from(format!("image {i}"))
    }
    /// `[h, w, c]` when every image has that shape (in-memory sets), `None` for files of any size.
    fn shape(&self) -> Option<[usize; 3]> {
        None
    }
}

impl Source for Dataset {
    fn len(&self) -> usize {
        Dataset::len(self)
    }
    fn label(&self, i: usize) -> u16 {
        self.labels[i]
    }
    fn classes(&self) -> usize {
        self.classes
    }
    /// CHW (as stored) to HWC.
    fn load(&self, i: usize) -> Result<Image> {
        let (c, plane) = (self.c, self.h * self.w);
        let src = self.image(i);
        let data = (0..plane * c).map(|j| src[(j % c) * plane + j / c]).collect();
        Ok(Image { w: self.w, h: self.h, c, data })
    }
    fn shape(&self) -> Option<[usize; 3]> {
        Some([self.h, self.w, self.c])
    }
}

/// Which half of an image folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// `root/train`.
    Train,
    /// `root/val`.
    Val,
}

/// An ImageNet-style folder: `root/{train,val}/<class>/<image>`. Classes are the sorted folder names of
/// `root/train` (the same list for both splits, so labels agree; a val class folder not in train is an error).
/// Every regular file in a class folder is listed (sorted); whether it is an image is found out when it is
/// loaded, by content, so a stray non-image file is one bad file, not a failed listing.
#[derive(Clone, Debug)]
pub struct ImageFolder {
    /// Class folder names, sorted; label = position.
    pub class_names: Vec<String>,
    /// Image files.
    pub files: Vec<PathBuf>,
    /// Label of each file.
    pub labels: Vec<u16>,
}

impl ImageFolder {
    /// Lists `root/train` or `root/val`.
    pub fn open(root: &Path, split: Split) -> Result<Self> {
        let class_names = list(&root.join("train"), true)?;
        if class_names.is_empty() {
            return Err(Error::format(&root.join("train"), "no class folders"));
        }
        if class_names.len() > u16::MAX as usize {
            return Err(Error::format(
                &root.join("train"),
                format!("{} class folders, at most 65535", class_names.len()),
            ));
        }
        let dir = root.join(match split {
            Split::Train => "train",
            Split::Val => "val",
        });
        if split == Split::Val {
            let sub = list(&dir, true)?;
            if let Some(extra) = sub.iter().find(|c| class_names.binary_search(c).is_err()) {
                return Err(Error::format(&dir.join(extra), "class folder missing from train/"));
            }
            let label_file = root.join(VAL_LABELS);
            if sub.is_empty() && label_file.is_file() {
                return Self::flat_val(&dir, &label_file, class_names);
            }
        }
        let (mut files, mut labels) = (Vec::new(), Vec::new());
        for (label, class) in class_names.iter().enumerate() {
            let cdir = dir.join(class);
            if !cdir.is_dir() {
                continue; // a class without val images
            }
            for f in list(&cdir, false)? {
                files.push(cdir.join(f));
                labels.push(label as u16);
            }
        }
        Ok(ImageFolder { class_names, files, labels })
    }
}

/// The label file of a flat `val/` folder (ImageNet's validation images as distributed, without class folders).
pub const VAL_LABELS: &str = "val_labels.txt";

impl ImageFolder {
    /// `val/` holds the images directly and `root/val_labels.txt` names each one's class: lines `FILE CLASS`
    /// (space, tab or comma separated; blank lines and `#` comments skipped), or Kaggle's `LOC_val_solution.csv`
    /// as is (header `ImageId,PredictionString`; the class is the first word of the prediction string, the file
    /// `ImageId.JPEG`). Errors name the label file and line; a listed file that is missing is a bad file at load.
    fn flat_val(dir: &Path, label_file: &Path, class_names: Vec<String>) -> Result<Self> {
        let text = std::fs::read_to_string(label_file).map_err(|e| Error::io(label_file, e))?;
        let (mut files, mut labels) = (Vec::new(), Vec::new());
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with("ImageId,") {
                continue;
            }
            let mut words = line.split(|c: char| c == ',' || c.is_whitespace()).filter(|w| !w.is_empty());
            let (Some(file), Some(class)) = (words.next(), words.next()) else {
                return Err(Error::format(label_file, format!("line {}: expected `FILE CLASS`", n + 1)));
            };
            let label = class_names.binary_search_by(|c| c.as_str().cmp(class)).map_err(|_| {
                Error::format(label_file, format!("line {}: class `{class}` is not a folder of train/", n + 1))
            })?;
            if file.contains('/') || file.contains('\\') || file == ".." {
                return Err(Error::format(label_file, format!("line {}: `{file}` is not a file name", n + 1)));
            }
            let name = if Path::new(file).extension().is_some() { file.to_string() } else { format!("{file}.JPEG") };
            files.push(dir.join(name));
            labels.push(label as u16);
        }
        Ok(ImageFolder { class_names, files, labels })
    }
}

/// Sorted names of the sub-folders (`dirs`) or regular files of `dir`.
fn list(dir: &Path, dirs: bool) -> Result<Vec<String>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut names = Vec::new();
    for e in rd {
        let e = e.map_err(|e| Error::io(dir, e))?;
        let ty = e.file_type().map_err(|err| Error::io(&e.path(), err))?;
        // Symlinks are followed (datasets are often linked in).
        let is_dir = if ty.is_symlink() { e.path().is_dir() } else { ty.is_dir() };
        if is_dir == dirs && !e.file_name().to_string_lossy().starts_with('.') {
            names.push(e.file_name().into_string().map_err(|n| Error::format(&dir.join(n), "name is not UTF-8"))?);
        }
    }
    names.sort();
    Ok(names)
}

impl Source for ImageFolder {
    fn len(&self) -> usize {
        self.files.len()
    }
    fn label(&self, i: usize) -> u16 {
        self.labels[i]
    }
    fn classes(&self) -> usize {
        self.class_names.len()
    }
    fn load(&self, i: usize) -> Result<Image> {
        read_image(&self.files[i])
    }
    fn path(&self, i: usize) -> PathBuf {
        self.files[i].clone()
    }
}

/// `n` images spread evenly over a source (image `i` is the source's `i·len/n`), so a limited run of a folder
/// sorted by class still sees every class.
pub struct Subset<S> {
    inner: S,
    n: usize,
}

impl<S: Source> Subset<S> {
    /// The first `n.min(len)` evenly spaced images of `inner`.
    pub fn new(inner: S, n: usize) -> Self {
        let n = n.min(inner.len());
        Subset { inner, n }
    }
    fn at(&self, i: usize) -> usize {
        // i < n ≤ len, so the product fits whenever len·n does; u128 keeps it exact for any sizes.
        (i as u128 * self.inner.len() as u128 / self.n.max(1) as u128) as usize
    }
}

impl<S: Source> Source for Subset<S> {
    fn len(&self) -> usize {
        self.n
    }
    fn label(&self, i: usize) -> u16 {
        self.inner.label(self.at(i))
    }
    fn classes(&self) -> usize {
        self.inner.classes()
    }
    fn load(&self, i: usize) -> Result<Image> {
        self.inner.load(self.at(i))
    }
    fn path(&self, i: usize) -> PathBuf {
        self.inner.path(self.at(i))
    }
    fn shape(&self) -> Option<[usize; 3]> {
        self.inner.shape()
    }
}
