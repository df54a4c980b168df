#!/usr/bin/env bash
# What the OHIF viewer tests and `nodestage demo --viewer` need (README "Viewing the results in OHIF"),
# installed only when missing: Orthanc's DICOMweb plugin, Debian's chromium + chromedriver, tesseract
# (reads the summary SC's text), node/npm (only to fetch OHIF), and the prebuilt OHIF v3 app,
# `npm pack @ohif/app@3.13.2`, unpacked and trimmed into a cache outside the repo.
set -euo pipefail
OHIF_VERSION=3.13.2
OHIF_SHA1=26a51ffcc1704c30fff403258a1d7392e9a991f3
CACHE="${NODESTAGE_OHIF_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/nodestage/ohif-$OHIF_VERSION}"

missing=()
[ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || missing+=(orthanc-dicomweb)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
command -v tesseract >/dev/null 2>&1 || missing+=(tesseract-ocr tesseract-ocr-eng)
[ -f "$CACHE/dist/index.html" ] || command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO=sudo; else
      echo "error: need root to install ${missing[*]} (apt-get); install them and rerun" >&2; exit 1; fi
  else SUDO=""; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

[ -f "$CACHE/dist/index.html" ] && exit 0
echo "fetching OHIF $OHIF_VERSION into $CACHE"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "@ohif/app@$OHIF_VERSION" >/dev/null)
tgz="$tmp/ohif-app-$OHIF_VERSION.tgz"
echo "$OHIF_SHA1  $tgz" | sha1sum -c --quiet -
tar xzf "$tgz" -C "$tmp"
# onnxruntime (136 MB), the microscopy viewer and the source maps are not needed to view CT/PET/SEG/SR/SC
rm -rf "$tmp/package/dist/ort" "$tmp/package/dist/dicom-microscopy-viewer"
find "$tmp/package/dist" -name '*.map' -delete
mkdir -p "$(dirname "$CACHE")"
rm -rf "$CACHE.partial" && mkdir -p "$CACHE.partial"
mv "$tmp/package/dist" "$CACHE.partial/dist"
cp "$tmp/package/package.json" "$CACHE.partial/"
rm -rf "$CACHE" && mv "$CACHE.partial" "$CACHE"
