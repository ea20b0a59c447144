#!/bin/sh
# Register the namespace the workers use (TEMPORAL_ADDRESS and NAMESPACE come from compose), and
# the custom search attributes the workflows set (orchestration/search.py; docs/deploy.md).
set -eu
temporal operator namespace describe --namespace "$NAMESPACE" >/dev/null 2>&1 \
  || temporal operator namespace create --namespace "$NAMESPACE" --retention 720h
existing=$(temporal operator search-attribute list --namespace "$NAMESPACE")
for name in BertExperiment BertConfig BertModel BertDataset BertStatus; do
  echo "$existing" | grep -qw "$name" \
    || temporal operator search-attribute create --namespace "$NAMESPACE" --name "$name" --type Keyword
done
echo "namespace $NAMESPACE ready"
