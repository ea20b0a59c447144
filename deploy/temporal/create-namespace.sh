#!/bin/sh
# Register the namespace the workers use (TEMPORAL_ADDRESS and NAMESPACE come from compose).
set -eu
temporal operator namespace describe --namespace "$NAMESPACE" >/dev/null 2>&1 \
  || temporal operator namespace create --namespace "$NAMESPACE" --retention 720h
echo "namespace $NAMESPACE ready"
