// Command gen writes circlebot.yaml (go generate ./deploy/cloudformation/).
package main

import (
	"fmt"
	"os"

	"github.com/circlebot/circlebot/deploy/cloudformation"
	"github.com/circlebot/circlebot/deploy/iam"
	"github.com/circlebot/circlebot/deploy/systemd"
)

func main() {
	out, err := cloudformation.Generate(cloudformation.Skeleton, iam.Template, systemd.Unit)
	if err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
	if err := os.WriteFile("circlebot.yaml", out, 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
}
