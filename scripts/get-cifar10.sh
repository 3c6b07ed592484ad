#!/usr/bin/env bash
# Downloads the official CIFAR-10 binary archive, checks its MD5 and unpacks it into DIR (default data/cifar10):
# DIR/data_batch_1..5.bin, DIR/test_batch.bin. Needs internet; offline it fails at once and says where the files
# go. Nothing is left half-written: the archive is fetched and unpacked in a temporary folder, then moved.
set -euo pipefail
out=${1:-data/cifar10}
url=https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz
md5=c32a1d4ab5d03f1284b67883e8d87530
if [ -f "$out/test_batch.bin" ] && [ -f "$out/data_batch_5.bin" ]; then echo "$out already holds CIFAR-10"; exit 0; fi
mkdir -p "$(dirname "$out")"
tmp=$(mktemp -d "$(dirname "$out")/.cifar10.XXXXXX"); trap 'rm -rf "$tmp"' EXIT
if ! curl -fsSL --connect-timeout 10 -o "$tmp/c.tgz" "$url"; then
  echo "error: cannot download $url (offline?). Copy cifar-10-batches-bin/*.bin from the official archive into $out" >&2
  exit 1
fi
echo "$md5  $tmp/c.tgz" | md5sum -c --quiet - || { echo "error: checksum mismatch for $url" >&2; exit 1; }
tar xzf "$tmp/c.tgz" -C "$tmp"
rm -rf "$out"; mv "$tmp/cifar-10-batches-bin" "$out"
echo "CIFAR-10 in $out"
