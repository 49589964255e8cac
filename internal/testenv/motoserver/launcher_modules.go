package motoserver

import (
	"bytes"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"os"
	"path/filepath"
	"slices"
)

// volumesModule makes moto keep block-device and boot settings as AWS
// does (RegisterImage's mappings and boot attributes, RunInstances'
// overrides, a snapshot's KMS key) and refuse the combinations AWS
// refuses; see its docstring. moto_patched.py imports it.
//
//go:embed launcher/circlebot_volumes.py
var volumesModule []byte

// launcherModules are the Python modules the launcher imports from its own
// directory (Python puts a script's directory first on sys.path).
var launcherModules = map[string][]byte{"circlebot_volumes.py": volumesModule}

// writeLauncher writes moto_patched.py and its modules into one directory
// under os.TempDir() named after all of their content, unless they are
// there already, and returns the launcher's path.
func writeLauncher() (string, error) {
	names := make([]string, 0, len(launcherModules))
	for n := range launcherModules {
		names = append(names, n)
	}
	slices.Sort(names)
	h := sha256.New()
	h.Write(patchedLauncher)
	for _, n := range names {
		h.Write([]byte("\x00" + n + "\x00"))
		h.Write(launcherModules[n])
	}
	dir := filepath.Join(os.TempDir(), "circlebot-moto-launcher-"+hex.EncodeToString(h.Sum(nil)[:8]))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	for _, n := range names {
		if err := writeFileOnce(dir, n, launcherModules[n]); err != nil {
			return "", err
		}
	}
	// The launcher last: a directory with the launcher in it is complete.
	if err := writeFileOnce(dir, "moto_patched.py", patchedLauncher); err != nil {
		return "", err
	}
	return filepath.Join(dir, "moto_patched.py"), nil
}

// writeFileOnce writes content as dir/name unless it is there already.
// Test binaries of several packages may race here: it writes a private
// file and renames it into place, which is atomic.
func writeFileOnce(dir, name string, content []byte) error {
	path := filepath.Join(dir, name)
	if b, err := os.ReadFile(path); err == nil && bytes.Equal(b, content) {
		return nil
	}
	f, err := os.CreateTemp(dir, name+"-*.tmp")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // after the rename there is nothing to remove
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(content); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
