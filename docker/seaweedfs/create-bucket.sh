#!/bin/sh
# Create the bucket S3_BUCKET in the SeaweedFS whose master is $MASTER, unless it is there already
# (the s3-bucket service of docker-compose.scale.yml runs this once per `up`). Tries for a minute:
# the store's S3 port answers before its master and filer are ready.
set -u
listed() {
    echo "s3.bucket.list" | weed shell -master="$MASTER" 2>/dev/null | awk -v b="$S3_BUCKET" '$1 == b' | grep -q .
}
for _ in $(seq 60); do
    if listed; then
        echo "bucket $S3_BUCKET is there"
        exit 0
    fi
    echo "s3.bucket.create -name $S3_BUCKET" | weed shell -master="$MASTER" >/dev/null 2>&1
    listed || sleep 1
done
echo "cannot create bucket $S3_BUCKET in the SeaweedFS at $MASTER" >&2
exit 1
