#!/usr/bin/env bash
# Fails when two source files of a crate import each other, directly or round a
# longer circle (docs/architecture.md: every import points down).
#
#   scripts/check-imports.sh [CRATE_DIR...]     default: every crate of the workspace
#
# A file's module is its path under src/ (a/b.rs and a/b/mod.rs are a::b). An
# import is a `crate::` or `super::` path in code (comments and the unit tests
# after `#[cfg(test)] mod tests` are left out), resolved to the longest module
# it names. A parent naming its own children (`mod x;`, `x::f()`) is how a folder
# is put together, not an import, and is not counted.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || set -- proto directory sidecar
status=0
for crate in "$@"; do
  src="$crate/src"
  [ -d "$src" ] || continue
  # One line per file: MODULE|FILE (the crate root's module is empty).
  mods=$(find "$src" -name '*.rs' -not -path "$src/bin/*" | sort | while read -r f; do
    rel=${f#"$src"/}
    rel=${rel%.rs}
    rel=${rel%/mod}
    case "$rel" in lib | main) rel="" ;; esac
    printf '%s|%s\n' "${rel//\//::}" "$f"
  done)
  # One line per import: FROM<TAB>PATH (a module path, maybe ending in an item).
  edges=$(printf '%s\n' "$mods" | while IFS='|' read -r mod file; do
    [ -n "$mod" ] || continue
    parent=${mod%::*}
    [ "$parent" = "$mod" ] && parent=""
    awk -v mod="$mod" -v parent="$parent" '
      /^[[:space:]]*#\[cfg\(test\)\]/ { test = 1; next }
      test && /^[[:space:]]*(pub )?mod tests/ { exit }
      { test = 0 }
      /^[[:space:]]*\/\// { next }
      {
        line = $0
        sub(/\/\/.*$/, "", line)
        # Groups: crate::{a, b::c}, crate::a::{b, c} and super::{a, b}.
        while (match(line, /(crate|super)(::[A-Za-z_][A-Za-z0-9_]*)*::\{[^{}]*\}/)) {
          grp = substr(line, RSTART, RLENGTH)
          line = substr(line, 1, RSTART - 1) " " substr(line, RSTART + RLENGTH)
          base = (grp ~ /^crate/) ? "" : parent
          pre = grp; sub(/::\{.*$/, "", pre); sub(/^(crate|super)(::)?/, "", pre)
          if (pre != "") base = (base == "" ? pre : base "::" pre)
          sub(/^[^{]*\{/, "", grp); sub(/\}$/, "", grp)
          n = split(grp, items, ",")
          for (i = 1; i <= n; i++) {
            it = items[i]; sub(/[[:space:]]+as[[:space:]].*/, "", it); gsub(/[[:space:]]/, "", it)
            if (it == "" || it == "self") continue
            print mod "\t" (base == "" ? it : base "::" it)
          }
        }
        while (match(line, /(crate|super)(::[A-Za-z_][A-Za-z0-9_]*)+/)) {
          p = substr(line, RSTART, RLENGTH)
          line = substr(line, RSTART + RLENGTH)
          if (p ~ /^crate::/) { sub(/^crate::/, "", p) }
          else { sub(/^super::/, "", p); if (parent != "") p = parent "::" p }
          print mod "\t" p
        }
      }' "$file" </dev/null
  done)
  [ -n "${DEBUG:-}" ] && printf "%s\n" "$edges" >&2
  printf '%s\n' "$mods" | cut -d'|' -f1 | grep -v '^$' >"/tmp/check-imports.$$.mods" || true
  if ! printf '%s\n' "$edges" | awk -v crate="$crate" -v modfile="/tmp/check-imports.$$.mods" '
    BEGIN { while ((getline m < modfile) > 0) known[m] = 1 }
    function resolve(p,   q) {
      q = p
      while (q != "") {
        if (q in known) return q
        if (index(q, "::") == 0) return ""
        sub(/::[^:]*$/, "", q)
      }
      return ""
    }
    # Depth-first search; a grey node met again closes a circle.
    function visit(v,   i, w, k, path) {
      colour[v] = 1; stack[++depth] = v
      for (i = 1; i <= nout[v]; i++) {
        w = out[v, i]
        if (colour[w] == 1) {
          path = w
          for (k = depth; k >= 1 && stack[k] != w; k--) path = stack[k] " -> " path
          path = w " -> " path
          printf "%s: import circle: %s\n", crate, path
          found = 1
        } else if (colour[w] == 0) visit(w)
      }
      depth--; colour[v] = 2
    }
    NF == 2 {
      to = resolve($2)
      if (to == "" || to == $1 || (($1, to) in seen)) next
      seen[$1, to] = 1; out[$1, ++nout[$1]] = to
    }
    END {
      for (m in known) if (!colour[m]) visit(m)
      exit found
    }'; then
    status=1
  fi
  rm -f "/tmp/check-imports.$$.mods"
done
[ $status -eq 0 ] && echo "check-imports: no import circles"
exit $status
