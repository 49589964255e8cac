# Sourced by the ssmbox stand-ins in $BOX_ROOT/bin. Not a real box file.
: "${SSMBOX_PROG:=ssmbox}"

ssmbox_die() {
	echo "$SSMBOX_PROG: $*" >&2
	exit 1
}

if [ -z "${BOX_ROOT:-}" ]; then
	ssmbox_die "BOX_ROOT is not set (the ssmbox SSM stand-in runs every command with it)"
fi

SSMBOX_STATE="$BOX_ROOT/.ssmbox"

# ssmbox_inside PATH: is PATH (after resolving . and ..) inside the box?
ssmbox_inside() {
	local root p
	root=$(realpath -m -- "$BOX_ROOT")
	p=$(realpath -m -- "$1")
	case "$p/" in
	"$root"/*) return 0 ;;
	esac
	return 1
}

# ssmbox_require_inside PATH: fail loudly when a script forgot the
# ${BOX_ROOT:-} prefix, instead of touching the test machine's own files.
ssmbox_require_inside() {
	if ! ssmbox_inside "$1"; then
		ssmbox_die "$1 is outside this box's filesystem ($BOX_ROOT); on the ssmbox test box a box path P is \${BOX_ROOT:-}P, e.g. \"\${BOX_ROOT:-}/tmp/backup\""
	fi
}

ssmbox_setting() {
	if [ -f "$SSMBOX_STATE/$1" ]; then
		cat -- "$SSMBOX_STATE/$1"
	fi
}
