#!/usr/bin/env bash
# A minimal Debian bookworm base (Python 3.11, venv, CA certificates) made with debootstrap and
# `docker import`: the base of the CPU image where no registry can be reached (CI, air-gapped hosts).
#   sudo images/debian_base.sh [TAG [INPUTS_LABEL]]      TAG: oseg3d-base:bookworm
# Needs root, debootstrap (apt-get install debootstrap) and the docker CLI; DEBIAN_MIRROR overrides the mirror.
# images/build.py --base debian runs it when the tag is missing or was made by another version of this file.
set -euo pipefail
tag=${1:-oseg3d-base:bookworm}
inputs=${2:-}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
root=$(mktemp -d /tmp/oseg3d-rootfs.XXXXXX)
trap 'rm -rf --one-file-system "$root"' EXIT
chmod 755 "$root"  # becomes the image's /, which mktemp made 0700
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" "$mirror"
# .debs, apt lists, manuals, locales and docs (licences kept): ~140 MB the image never reads
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/man "$root"/usr/share/locale
find "$root"/usr/share/doc -type f ! -name copyright -delete
tar -C "$root" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change "LABEL oseg3d.inputs=$inputs" \
  --change 'CMD ["/bin/bash"]' \
  - "$tag"
