#!/usr/bin/env bash
# Copies a handheld .pte and its tokenizer to a connected Android phone, into the folder the chat app lists.
#   android_demo/push.sh [-s SERIAL] [-d DEVICE_DIR] MODEL.pte TOKENIZER
# TOKENIZER is tokenizer.model or tokenizer.json; a tokenizer_config.json beside a tokenizer.json goes too
# (the app picks the chat template from it). Needs only bash and adb.
set -euo pipefail

die() {
  echo "push.sh: $*" >&2
  exit 1
}

serial=""
dir="/data/local/tmp/handheld"
while getopts "s:d:h" opt; do
  case "$opt" in
    s) serial=$OPTARG ;;
    d) dir=${OPTARG%/} ;;
    *) die "usage: push.sh [-s SERIAL] [-d DEVICE_DIR] MODEL.pte TOKENIZER" ;;
  esac
done
shift $((OPTIND - 1))
[ $# -eq 2 ] || die "usage: push.sh [-s SERIAL] [-d DEVICE_DIR] MODEL.pte TOKENIZER"
pte=$1
tokenizer=$2
[ -f "$pte" ] || die "no such file: $pte"
[ -f "$tokenizer" ] || die "no such file: $tokenizer"
[[ $pte == *.pte ]] || die "$pte is not a .pte program"
[[ $tokenizer == *.model || $tokenizer == *.json ]] || die "$tokenizer is not a tokenizer.model or tokenizer.json"

command -v adb > /dev/null || die "adb not found: install Android's platform-tools (Debian: apt-get install adb)"
adb=(adb)
[ -z "$serial" ] || adb+=(-s "$serial")

# `adb devices` lists "SERIAL<tab>STATE" under a header; only the state "device" can take files.
devices=()
while read -r name state; do
  if [ "$state" = device ]; then devices+=("$name"); fi
done < <(adb devices)
if [ -n "$serial" ]; then
  [[ " ${devices[*]} " == *" $serial "* ]] || die "no device $serial among the connected ones (adb devices)"
else
  [ ${#devices[@]} -gt 0 ] || die "no device connected (adb devices lists none ready; is USB debugging allowed?)"
  [ ${#devices[@]} -eq 1 ] || die "${#devices[@]} devices connected: choose one with -s SERIAL"
fi

# adb shell joins its arguments into one command line for the device's shell: quote every word we send there.
quote() {
  local escaped=${1//\'/\'\\\'\'}
  printf "'%s'" "$escaped"
}

files=("$pte" "$tokenizer")
case $tokenizer in
  */*) config=${tokenizer%/*}/tokenizer_config.json ;;
  *) config=tokenizer_config.json ;;
esac
if [[ $tokenizer == *.json && -f $config ]]; then files+=("$config"); fi

"${adb[@]}" shell "mkdir -p $(quote "$dir")"
pushed=""
for file in "${files[@]}"; do
  "${adb[@]}" push "$file" "$dir/"
  pushed+=" $(quote "$dir/${file##*/}")"
done
# The app runs as its own user: it must be able to list the folder and read the files, whatever mode the
# host gave them (adb push keeps it).
"${adb[@]}" shell "chmod 755 $(quote "$dir")"
"${adb[@]}" shell "chmod 644$pushed"
echo "pushed ${#files[@]} files to $dir; open handheld chat, List, Load"
