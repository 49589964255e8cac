//go:build unix

package ssmbox

import (
	"os"
	"syscall"
)

// Each command leads its own process group so a cancel or a timeout kills
// everything it started, as the SSM agent does.
func sysProcAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }

func killGroup(p *os.Process) { syscall.Kill(-p.Pid, syscall.SIGKILL) }

// killPgid kills what is left of a finished command's process group (a
// background child it started), when the server closes.
func killPgid(pgid int) {
	if pgid > 0 {
		syscall.Kill(-pgid, syscall.SIGKILL)
	}
}
