package motoserver

import (
	"os"
	"syscall"
)

func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// The group, not just the process: a wrapper (a shim, a test script) may
// fork Python instead of exec-ing it, and that child must not outlive Close.
func terminate(p *os.Process) error { return signalGroup(p, syscall.SIGTERM) }
func kill(p *os.Process) error      { return signalGroup(p, syscall.SIGKILL) }

func signalGroup(p *os.Process, sig syscall.Signal) error {
	err := syscall.Kill(-p.Pid, sig)
	if err == syscall.ESRCH {
		return nil
	}
	return err
}
