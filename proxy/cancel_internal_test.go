package proxy

import (
	"errors"
	"net"
	"os"
	"testing"
	"time"
)

func TestTryCancel(t *testing.T) {
	t.Run("called off before the connection is attached", func(t *testing.T) {
		var c tryCancel
		c.cancel()
		a, _ := net.Pipe()
		defer a.Close()
		if c.attach(a) {
			t.Error("attach accepted a connection for a called-off attempt")
		}
		if !c.isCanceled() {
			t.Error("isCanceled = false after cancel")
		}
	})
	t.Run("called off while waiting: the read returns at once", func(t *testing.T) {
		var c tryCancel
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		if !c.attach(a) {
			t.Fatal("attach refused")
		}
		read := make(chan error, 1)
		go func() {
			_, err := a.Read(make([]byte, 1))
			read <- err
		}()
		c.cancel()
		select {
		case err := <-read:
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("read ended with %v, want a deadline error", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the read was not interrupted")
		}
		if !c.detach() {
			t.Error("detach did not report the cancel: the connection would be pooled")
		}
	})
	t.Run("detached before the cancel: the connection is left alone", func(t *testing.T) {
		var c tryCancel
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		c.attach(a)
		if c.detach() {
			t.Fatal("detach reported a cancel that did not happen")
		}
		c.cancel()
		go b.Write([]byte("x"))
		if _, err := a.Read(make([]byte, 1)); err != nil {
			t.Errorf("cancel touched a detached connection: %v", err)
		}
	})
}
