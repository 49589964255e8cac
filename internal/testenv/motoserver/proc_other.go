//go:build !linux

package motoserver

import (
	"errors"
	"os"
	"syscall"
)

func sysProcAttr() *syscall.SysProcAttr { return nil }

func terminate(p *os.Process) error { return ignoreDone(p.Kill()) }
func kill(p *os.Process) error      { return ignoreDone(p.Kill()) }

func ignoreDone(err error) error {
	if errors.Is(err, os.ErrProcessDone) {
		return nil
	}
	return err
}
