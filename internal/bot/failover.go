package bot

import (
	"context"
	"fmt"
	"strings"

	"github.com/circlebot/circlebot/internal/chat"
	"github.com/circlebot/circlebot/internal/ops"
)

func (d Deps) buildersStatus(ctx context.Context, c Call) (Outcome, error) {
	if d.Builders == nil {
		return Outcome{}, &UserError{Msg: "no builder group is configured (`builders.asg_name`)."}
	}
	st, err := d.Builders.Status(ctx)
	if err != nil {
		return Outcome{}, &UserError{Msg: ops.Explain(err)}
	}
	var b strings.Builder
	healthy := 0
	for _, i := range st.Instances {
		if i.State == "InService" && i.Health == "Healthy" {
			healthy++
		}
	}
	mark := ":white_check_mark:"
	if healthy < int(st.Desired) {
		mark = ":warning:"
	}
	fmt.Fprintf(&b, "%s *Builders* `%s`: %d healthy of %d desired (min %d, max %d)", mark, st.Group, healthy, st.Desired, st.Min, st.Max)
	if st.LaunchTemplate != "" {
		fmt.Fprintf(&b, ", launch template %s", st.LaunchTemplate)
	}
	b.WriteString("\n")
	for _, i := range st.Instances {
		fmt.Fprintf(&b, "• `%s` %s, %s, %s %s\n", i.ID, i.State, i.Health, i.AZ, i.Type)
	}
	if box, err := ops.FindBox(ctx, d.Status.EC2, d.Status.Target.NameTag); err == nil {
		sh := ops.ShapeOf(box)
		addr := sh.PrivateIP
		if len(sh.SecondaryIPs) > 0 {
			addr += " (service address " + strings.Join(sh.SecondaryIPs, ", ") + ")"
		}
		fmt.Fprintf(&b, "Builders reach the Services box `%s` (%s) at %s.", sh.InstanceID, box.State.Name, addr)
	}
	b.WriteString(fmt.Sprintf("\nAfter a restore or failover: `%s builders rotate`.", d.SlashCommand))
	return OK, c.Reply.Ephemeral(ctx, chat.Text(b.String()))
}
