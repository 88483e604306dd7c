#!/usr/bin/env bash
# Vendors boto3 into the thumbnail function (functions bundle their SDK, as Lambda recommends;
# nimbus gives each instance AWS_ENDPOINT_URL and a key, so boto3 needs no configuration).
# Idempotent: does nothing when boto3 is already there.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
target="$here/functions/thumbnail"
if [[ -d "$target/boto3" ]]; then
  echo "boto3 is already vendored in $target"
  exit 0
fi
python3 -m pip install --quiet --disable-pip-version-check --no-warn-conflicts --target "$target" "boto3>=1.34"
echo "vendored boto3 into $target"
