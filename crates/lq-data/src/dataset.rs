//! An in-memory labelled image set: u8 pixels, CHW per image.

/// Images `n × c × h × w` (u8, CHW per image) with one class label each.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// Pixels, image after image.
    pub images: Vec<u8>,
    /// Class of each image.
    pub labels: Vec<u16>,
    /// Channels.
    pub c: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
    /// Number of classes (labels are `< classes`).
    pub classes: usize,
}

impl Dataset {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    /// True when there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    /// Pixels of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let s = self.c * self.h * self.w;
        &self.images[i * s..(i + 1) * s]
    }
    /// The first `n` images (all if fewer).
    pub fn take(mut self, n: usize) -> Self {
        let n = n.min(self.len());
        self.images.truncate(n * self.c * self.h * self.w);
        self.labels.truncate(n);
        self
    }
}
