defmodule RelsyncMix.MixProject do
  use Mix.Project

  # `mix relsync`: build the release, then push it onto a running board with the relsync
  # command (pip install relsync). No dependencies.
  def project do
    [
      app: :relsync_mix,
      version: "0.1.0",
      elixir: "~> 1.12",
      start_permanent: false,
      deps: [],
      description: "mix relsync: build the release, then sync it onto a running board",
      package: [licenses: ["Apache-2.0"], links: %{}]
    ]
  end

  def application do
    [extra_applications: []]
  end
end
