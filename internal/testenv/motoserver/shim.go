package motoserver

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"
)

// A pyenv shim (~/.pyenv/shims/moto_server, .../python3) runs pyenv's bash
// scripts to pick the Python version on every start: about a second of CPU
// and one to two seconds of wall time on a loaded 2-core machine, more than
// moto_server itself takes to come up. unshim asks pyenv once per test
// binary and program which executable the shim would run, and Start runs
// that directly.
var shimmed sync.Map // shim path -> resolved path (or the shim itself)

var (
	shimExec = regexp.MustCompile(`(?m)^exec "([^"]+/pyenv)" exec "\$program" "\$@"\s*$`)
	shimRoot = regexp.MustCompile(`(?m)^export PYENV_ROOT="([^"]+)"\s*$`)
)

// unshim returns the executable the pyenv shim at path runs, or path when
// it is not a pyenv shim or pyenv cannot tell.
func unshim(path string) string {
	if v, ok := shimmed.Load(path); ok {
		return v.(string)
	}
	resolved := resolveShim(path)
	v, _ := shimmed.LoadOrStore(path, resolved)
	return v.(string)
}

func resolveShim(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return path
	}
	head, _ := io.ReadAll(io.LimitReader(f, 4<<10))
	f.Close()
	if !bytes.HasPrefix(head, []byte("#!")) {
		return path // a binary, not a shim
	}
	m := shimExec.FindSubmatch(head)
	if m == nil {
		return path
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, string(m[1]), "which", filepath.Base(path))
	cmd.Env = os.Environ()
	if r := shimRoot.FindSubmatch(head); r != nil {
		cmd.Env = append(cmd.Env, "PYENV_ROOT="+string(r[1]))
	}
	out, err := cmd.Output()
	if err != nil {
		return path
	}
	real := strings.TrimSpace(string(out))
	if st, err := os.Stat(real); err != nil || st.IsDir() || st.Mode()&0o111 == 0 || !filepath.IsAbs(real) {
		return path
	}
	return real
}
