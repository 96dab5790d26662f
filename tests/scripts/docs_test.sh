#!/usr/bin/env bash
# What a newcomer reading README.md and docs/ relies on (issue "A newcomer's
# first hour"), checked so that it stays true:
#   - no reference to a text that is not in the repository ("the spec", "spec §")
#     and no development-session labels ("session 4") in the docs;
#   - every docs/X.md and scripts/X.sh that README.md or docs/ name exists;
#   - docs/QUICKSTART.md lists every examples/*.cc and its build command names
#     every example target; its build before `cmake --install` names every
#     installed tool (tools/*.cc), or the install fails for want of one.
# Usage: docs_test.sh <repo root>
set -u
ROOT="${1:?usage: docs_test.sh <repo root>}"
cd "$ROOT" || exit 1
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

docs=(README.md docs/*.md)

hits="$(grep -nE '\bspec §|\bthe (API )?spec\b|§ ?[0-9]' "${docs[@]}")"
[[ -z $hits ]] || fail "references to a spec that is not in the repository:"$'\n'"$hits"
hits="$(grep -nE '\b[Ss]ession [0-9]+\b' "${docs[@]}")"
[[ -z $hits ]] || fail "development-session labels:"$'\n'"$hits"

# (docs/X.md and scripts/X.sh of the repository root, not tests/scripts/X.sh)
for f in $(grep -ohE '(^|[^/[:alnum:]_.-])(docs/[A-Z_]+\.md|scripts/[a-z_]+\.sh)\b' "${docs[@]}" |
           sed -E 's/^[^ds]//' | sort -u); do
  [[ -e $f ]] || fail "$f is named in the docs but does not exist"
done

quick=docs/QUICKSTART.md
build_line="$(grep -m1 -E '^cmake --build build .*--target' "$quick")"
[[ -n $build_line ]] || fail "$quick has no 'cmake --build build ... --target' line"
for src in examples/*.cc; do
  name="$(basename "$src" .cc)"
  grep -qF "\`$name.cc\`" "$quick" || fail "$quick does not describe examples/$name.cc"
  [[ " $build_line " == *" $name "* ]] || fail "$quick's build command does not build $name"
done

install_line="$(grep -B1 -E '^cmake --install build' "$quick" | grep -E '^cmake --build build .*--target')"
[[ -n $install_line ]] || fail "$quick: no 'cmake --build build ... --target' line right before 'cmake --install build'"
for src in tools/*.cc; do
  name="$(basename "$src" .cc)"
  [[ " $install_line " == *" $name "* ]] || fail "$quick's build before the install does not build the tool $name"
done

if [[ $fails -ne 0 ]]; then
  echo "docs_test: $fails failure(s)"
  exit 1
fi
echo "docs_test: OK"
