package bot

import (
	"context"
	"errors"
	"time"

	"github.com/circlebot/circlebot/internal/store"
)

// ReadinessState keeps the doctor's last verdict (the state store), so
// that a change from ready to not ready alerts once, on whichever replica
// sends the report.
type ReadinessState interface {
	Put(ctx context.Context, bucket, key string, v any) error
	Get(ctx context.Context, bucket, key string, v any) error
}

// readiness is the doctor's last verdict as kept.
type readiness struct {
	Ready   bool      `json:"ready"`
	Verdict string    `json:"verdict"`
	At      time.Time `json:"at"`
}

const readinessBucket, readinessKey = "doctor", "last"

// readinessLine runs the doctor for the daily report and returns its
// verdict line ("" without a doctor). When the verdict turned from ready
// (or never checked) to not ready, it alerts once.
func (s *Reports) readinessLine(ctx context.Context) string {
	if s.Doctor == nil {
		return ""
	}
	rep := s.Doctor.Run(ctx)
	line := "\n*" + rep.Verdict() + "*"
	if !rep.Ready() {
		line += " `" + s.SlashCommand + " doctor` shows what and how to fix it."
	}
	if s.Readiness == nil {
		return line
	}
	var last readiness
	err := s.Readiness.Get(ctx, readinessBucket, readinessKey, &last)
	switch {
	case errors.Is(err, store.ErrNotFound):
		last = readiness{Ready: true}
	case err != nil:
		s.Log.Error("read the doctor's last verdict", "err", err)
		return line
	}
	if last.Ready && !rep.Ready() && s.Alert != nil {
		if err := s.Alert(ctx, ":rotating_light: "+rep.Verdict()+"\n"+DoctorText(rep)); err != nil {
			s.Log.Error("alert that a recovery would not work", "err", err)
			return line // not recorded: the next report alerts again
		}
	}
	if err := s.Readiness.Put(ctx, readinessBucket, readinessKey, readiness{Ready: rep.Ready(), Verdict: rep.Verdict(), At: rep.At}); err != nil {
		s.Log.Error("record the doctor's verdict", "err", err)
	}
	return line
}
